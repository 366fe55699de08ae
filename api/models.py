"""API tokens: issued by an admin to a user, sent as `Authorization: Bearer <token>`.

Only a SHA-256 hash of each token is stored; the token itself is shown once, when issued.
Tokens are 256 random bits, so a fast hash is enough (nothing to brute-force) and lets a
request find its token with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "kb_"
# Characters of the token kept in clear, to tell tokens apart in the admin.
SHOWN_CHARS = 8


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    """Issue and check tokens."""

    def issue(self, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
        """Create a token for `user`; return the row and the token, which is not kept."""
        row = self.model(user=user, name=name)
        token = row.set_new_token()
        row.save()
        return row, token

    def user_for(self, token: str) -> AbstractBaseUser | None:
        """The active user an active token belongs to, or None."""
        row = (
            self.select_related("user")
            .filter(token_hash=hash_token(token), is_active=True, user__is_active=True)
            .first()
        )
        if row is None:
            return None
        self.filter(pk=row.pk).update(last_used_at=timezone.now())
        return row.user


class ApiToken(models.Model):
    """A token that acts as its user (with that user's permissions) on the API."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. the client.")
    prefix = models.CharField(max_length=SHOWN_CHARS, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True, help_text="Uncheck to revoke the token.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}...)"

    def set_new_token(self) -> str:
        """Give this row a fresh token and return it; only its hash is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.prefix = token[:SHOWN_CHARS]
        self.token_hash = hash_token(token)
        return token

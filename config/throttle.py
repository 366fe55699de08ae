"""Slow down password and token guessing: refuse attempts after too many failures.

A failure counts against a key: the admin login's is the username and the client's
address, an API token's the address alone. After `AUTH_FAILURE_LIMIT` failures the key is
locked for `AUTH_LOCKOUT_SECONDS`, and every attempt is refused, the right one too; a success
forgets the failures. The counts live in the shared cache (settings.CACHES), so every web
process sees them. Behind a proxy every client has the proxy's address: set
DJANGO_BEHIND_TLS_PROXY only where that proxy is the only way in.

The API's token authentication calls `locked_for("token", address)` before checking a token,
`failed("token", address)` after a wrong one (both with `client_address(request)`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest

logger = logging.getLogger(__name__)

ADMIN_LOGIN = "admin-login"
TOKEN = "token"


def client_address(request: HttpRequest | None) -> str:
    """The address the request came from (the proxy's, behind one)."""
    return (request.META.get("REMOTE_ADDR") or "unknown") if request is not None else "unknown"


def _key(scope: str, who: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\0".join(who).encode()).hexdigest()
    return f"throttle:{scope}:{digest}"


def locked_for(scope: str, *who: str) -> float:
    """Seconds `who` is still refused in `scope` (0 when not locked)."""
    entry = cache.get(_key(scope, who))
    if not entry:
        return 0.0
    return max(0.0, entry["locked_until"] - time.time())


def failed(scope: str, *who: str) -> float:
    """Count a failure of `who`; return the seconds it is now locked for (0: not locked)."""
    key = _key(scope, who)
    entry = cache.get(key) or {"failures": 0, "locked_until": 0.0}
    entry["failures"] += 1
    lockout = settings.AUTH_LOCKOUT_SECONDS
    if entry["failures"] >= settings.AUTH_FAILURE_LIMIT:
        entry["locked_until"] = time.time() + lockout
        logger.warning(
            "Locked %s attempts of %s for %ss after %s failures",
            scope,
            who[-1],
            lockout,
            entry["failures"],
        )
    # Failures are forgotten a lockout period after the last one.
    cache.set(key, entry, timeout=lockout)
    return max(0.0, entry["locked_until"] - time.time())


def succeeded(scope: str, *who: str) -> None:
    """Forget `who`'s failures in `scope`."""
    cache.delete(_key(scope, who))


def refusal(seconds: float) -> str:
    """The message of a refused attempt."""
    minutes = max(1, math.ceil(seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed attempts: try again in {minutes} {unit}."


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form, refusing a username and address after too many failures."""

    def clean(self) -> dict:
        who = ((self.cleaned_data.get("username") or "").lower(), client_address(self.request))
        wait = locked_for(ADMIN_LOGIN, *who)
        if wait:
            raise ValidationError(refusal(wait), code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError:
            wait = failed(ADMIN_LOGIN, *who)
            if wait:
                raise ValidationError(refusal(wait), code="throttled") from None
            raise
        succeeded(ADMIN_LOGIN, *who)
        return cleaned

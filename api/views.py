"""The GraphQL endpoint: a staff session or an API token, and CSRF for cookie sessions.

The URL is csrf_exempt so that token clients, which carry no cookie and so cannot be
forged cross-site, need no CSRF token; requests that authenticate with the session cookie
get Django's CSRF check here instead, exactly as the middleware would apply it.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from strawberry.django.views import GraphQLView

from api.models import ApiToken

ANONYMOUS_MESSAGE = (
    "Authentication required: log in to the admin as staff, or send "
    "'Authorization: Bearer <token>' with a token an admin issued."
)


def _unauthorized(message: str) -> JsonResponse:
    response = JsonResponse({"data": None, "errors": [{"message": message}]}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="graphql"'
    return response


def _csrf_failure(request: HttpRequest) -> HttpResponseBase | None:
    """Django's CSRF check of this request: None if it passes, else the 403 response."""
    return CsrfViewMiddleware(lambda _: None).process_view(request, None, (), {})


class KillboardGraphQLView(GraphQLView):
    """Authenticates the request before strawberry runs anything, introspection included."""

    # Reads go through POST too, so one CSRF rule covers every cookie-authenticated request.
    allow_queries_via_get = False

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            user = ApiToken.objects.user_for(token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                return _unauthorized("Invalid or revoked API token.")
            request.user = user
        else:
            user = request.user
            if not (user.is_authenticated and user.is_active and user.is_staff):
                return _unauthorized(ANONYMOUS_MESSAGE)
            failure = _csrf_failure(request)
            if failure is not None:
                return failure
        return super().dispatch(request, *args, **kwargs)

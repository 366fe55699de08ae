"""The GraphQL endpoint: a staff session or an API token, CSRF for cookie sessions, rates.

The URL is csrf_exempt so that token clients, which carry no cookie and so cannot be
forged cross-site, need no CSRF token; requests that authenticate with the session cookie
get Django's CSRF check here instead, exactly as the middleware would apply it.

Before strawberry runs anything: the client address's rate (api.rates), the token lockout
after failed attempts (config.throttle), authentication, then the credential's rate. Queries
go through POST only; GET serves the GraphiQL page (from the project's static files, so it
works offline) to a staff session, and nothing else.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.template.loader import render_to_string
from strawberry.django.views import GraphQLView

from api import rates
from api.models import ApiToken, hash_token
from config import throttle

ANONYMOUS_MESSAGE = (
    "Authentication required: log in to the admin as staff, or send "
    "'Authorization: Bearer <token>' with a token an admin issued."
)
GET_MESSAGE = "GraphQL queries and mutations must be sent with POST, not GET."


def _error(message: str, status: int, **extensions: Any) -> JsonResponse:
    error: dict[str, Any] = {"message": message}
    if extensions:
        error["extensions"] = extensions
    return JsonResponse({"data": None, "errors": [error]}, status=status)


def _unauthorized(message: str) -> JsonResponse:
    response = _error(message, 401)
    response["WWW-Authenticate"] = 'Bearer realm="graphql"'
    return response


def _too_many(message: str, retry_after: int) -> JsonResponse:
    response = _error(message, 429, code="RATE_LIMITED", retryAfter=retry_after)
    response["Retry-After"] = str(retry_after)
    return response


def _csrf_failure(request: HttpRequest) -> HttpResponseBase | None:
    """Django's CSRF check of this request: None if it passes, else the 403 response."""
    return CsrfViewMiddleware(lambda _: None).process_view(request, None, (), {})


def _token_user(request: HttpRequest, header: str) -> tuple[str, HttpResponseBase | None]:
    """Authenticate a bearer token: (the credential's rate key, None) or ("", the refusal)."""
    address = throttle.client_address(request)
    wait = throttle.locked_for(throttle.TOKEN, address)
    if wait:
        return "", _too_many(throttle.refusal(wait), int(wait) + 1)
    scheme, _, token = header.partition(" ")
    user = ApiToken.objects.user_for(token.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        wait = throttle.failed(throttle.TOKEN, address)
        if wait:
            return "", _too_many(throttle.refusal(wait), int(wait) + 1)
        return "", _unauthorized("Invalid or revoked API token.")
    throttle.succeeded(throttle.TOKEN, address)
    request.user = user
    return f"token:{hash_token(token.strip())}", None


def _session_user(request: HttpRequest) -> tuple[str, HttpResponseBase | None]:
    """A staff session, with the CSRF check: (the credential's rate key, None) or the refusal."""
    user = request.user
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return "", _unauthorized(ANONYMOUS_MESSAGE)
    failure = _csrf_failure(request)
    if failure is not None:
        return "", failure
    return f"user:{user.pk}", None


class KillboardGraphQLView(GraphQLView):
    """Authenticates and rate-limits the request before strawberry runs anything,
    introspection included."""

    def __init__(self, **kwargs: Any) -> None:
        # Strawberry sets this from its constructor, whatever the class says: reads go
        # through POST too, so one CSRF rule covers every cookie-authenticated request.
        kwargs["allow_queries_via_get"] = False
        super().__init__(**kwargs)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        address = throttle.client_address(request)
        exceeded = rates.take(rates.ADDRESS, address, settings.GRAPHQL_ADDRESS_RATE_PER_MINUTE)
        if exceeded:
            return _too_many(exceeded.message, exceeded.retry_after)
        header = request.headers.get("Authorization", "")
        credential, refusal = _token_user(request, header) if header else _session_user(request)
        if refusal is not None:
            return refusal
        exceeded = rates.take(rates.CREDENTIAL, credential, settings.GRAPHQL_RATE_PER_MINUTE)
        if exceeded:
            return _too_many(exceeded.message, exceeded.retry_after)
        if request.method == "GET" and not self.should_render_graphql_ide(
            self.request_adapter_class(request)
        ):
            response = _error(GET_MESSAGE, 405)
            response["Allow"] = "POST"
            return response
        return super().dispatch(request, *args, **kwargs)

    def render_graphql_ide(self, request: HttpRequest) -> HttpResponse:
        """GraphiQL, its scripts and styles from the project's static files (no CDN)."""
        get_token(request)  # sets the CSRF cookie the page's POSTs send back
        return HttpResponse(render_to_string("api/graphiql.html", request=request))

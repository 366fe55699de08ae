"""/metrics for Prometheus and /healthz for load balancers."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config import throttle
from monitoring import health
from monitoring.metrics import REGISTRY

# Headers a reverse proxy adds: a request carrying one came from outside, whatever its address.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-Ip")
METRICS_SCOPE = "metrics"


def _from_loopback(request: HttpRequest) -> bool:
    try:
        loopback = ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
    return loopback and not any(header in request.headers for header in PROXY_HEADERS)


def _metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read the metrics, else the answer that refuses it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not token and _from_loopback(request):
        return None
    address = throttle.client_address(request)
    wait = throttle.locked_for(METRICS_SCOPE, address)
    if wait:
        response = HttpResponse(throttle.refusal(wait), status=429, content_type="text/plain")
        response["Retry-After"] = str(int(wait) + 1)
        return response
    expected = settings.METRICS_TOKEN
    if (
        expected
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        return None
    if token:
        throttle.failed(METRICS_SCOPE, address)
    response = HttpResponse(
        "Metrics need 'Authorization: Bearer <METRICS_TOKEN>' or a loopback client.",
        status=401,
        content_type="text/plain",
    )
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every metric, in Prometheus' text format."""
    refusal = _metrics_refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker and beat are fine; 503 naming what failed."""
    checks = health.run_checks()
    failing = [name for name, check in checks.items() if not check.ok]
    body = {
        "status": "failing" if failing else "ok",
        "failing": failing,
        "checks": {name: check.detail for name, check in checks.items()},
    }
    return JsonResponse(body, status=503 if failing else 200)

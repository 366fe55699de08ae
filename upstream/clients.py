"""The clients as this deployment runs them: built from the Django settings, one per process.

The only module of `upstream` that reads settings. The shared limiter is an argument (it is a
database row in `killboard.ratelimit`, and `upstream` imports no app), so the apps call
`esi_client(ratelimit)`. One wait policy for every upstream: in-process (no broker, the
embedded default) there is no retry queue, so a call waits as long as the upstream asks; on a
worker it waits `WORKER_MAX_WAIT` at most, then raises `RateLimited` and the task retries.
"""

from __future__ import annotations

import functools

from django.conf import settings

from upstream.esi import EsiClient
from upstream.limiter import EMBEDDED_MAX_WAIT, WORKER_MAX_WAIT, Limiter
from upstream.r2z2 import R2z2Client
from upstream.zkillboard import ZkillboardClient


def _max_wait() -> float:
    """Seconds a call may wait inline for a blocked slot before raising `RateLimited`."""
    return EMBEDDED_MAX_WAIT if settings.CELERY_TASK_ALWAYS_EAGER else WORKER_MAX_WAIT


def zkillboard_client(limiter: Limiter) -> ZkillboardClient:
    """The process's zKillboard client for settings.ZKILLBOARD_API_URL (one session)."""
    return _zkillboard(
        settings.ZKILLBOARD_API_URL,
        settings.EVE_CONTACT,
        settings.ZKILLBOARD_REQUESTS_PER_SECOND,
        limiter,
        _max_wait(),
    )


def esi_client(limiter: Limiter) -> EsiClient:
    """The process's ESI client for settings.ESI_URL: one session, and the route groups'
    buckets it learned, shared by killmail bodies and enrichment. Announced buckets are
    paced at settings.ESI_BUCKET_SHARE; other groups share settings.ESI_CONCURRENCY
    requests in flight across the deployment."""
    return _esi(
        settings.ESI_URL,
        settings.EVE_CONTACT,
        limiter,
        _max_wait(),
        settings.ESI_BUCKET_SHARE,
        settings.ESI_CONCURRENCY,
    )


def r2z2_client(limiter: Limiter) -> R2z2Client:
    """The process's R2Z2 client for settings.R2Z2_URL (one session)."""
    return _r2z2(
        settings.R2Z2_URL,
        settings.EVE_CONTACT,
        settings.R2Z2_REQUESTS_PER_SECOND,
        limiter,
        _max_wait(),
    )


@functools.lru_cache(maxsize=4)
def _zkillboard(
    url: str, contact: str, rate: float, limiter: Limiter, max_wait: float
) -> ZkillboardClient:
    return ZkillboardClient(url, contact, rate, limiter, max_wait)


@functools.lru_cache(maxsize=4)
def _esi(
    url: str, contact: str, limiter: Limiter, max_wait: float, share: float, concurrency: int
) -> EsiClient:
    return EsiClient(
        url, contact, limiter, bucket_share=share, concurrency=concurrency, max_wait=max_wait
    )


@functools.lru_cache(maxsize=4)
def _r2z2(url: str, contact: str, rate: float, limiter: Limiter, max_wait: float) -> R2z2Client:
    return R2z2Client(url, contact, rate, limiter, max_wait)

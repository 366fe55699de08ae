"""Live: the R2Z2 follower against a feed of 10 killmails a second (about 10x the real average).

The fake upstream runs as its own process and grows its live feed at FEED_RATE killmails a
second from the moment the follower starts; `manage.py follow_live --seconds RUN_SECONDS`
follows it on the bench database (PostgreSQL), one process, at the default R2Z2 rate. Then:

- lag: for every killmail the feed served, the time it was stored (`Killmail.created_at`)
  minus the time the fake appended it to the feed; mean, 95th percentile and maximum, over
  the killmails uploaded after the first WARMUP seconds (the first start reads from the
  current sequence, then settles);
- throughput: killmails stored per second of the run against the feed's rate (>= 1: keeps up);
- requests: R2Z2 requests per second of the run (at most 15, R2Z2's rule), and the fake's
  rule violations (a request over the rate, a 404 asked again within 6 seconds).
"""

from __future__ import annotations

import statistics
import subprocess
import time

from benchmarks.environment import PYTHON, ROOT, VAR, FakeProcess, Row, reset_data, subprocess_env

FEED_RATE = 10.0  # killmails a second appended to the fake's feed
RUN_SECONDS = 90  # how long the follower runs
WARMUP = 10  # seconds of the run not judged for lag
LAG_TARGET = 5.0  # seconds
R2Z2_LIMIT = 15.0  # requests a second per IP, R2Z2's rule


def _lags(fake: FakeProcess, since: float, until: float) -> tuple[list[float], int]:
    """The lag (seconds) of each killmail the feed served between `since` and `until` (unix
    seconds) that the follower stored; and how many it served in that window."""
    from killboard.models import Killmail

    report = fake.live()
    uploaded: dict[int, float] = {}
    for sequence, killmail_id in report["packages"]:
        # A killmail fed again (reprocessed) was stored when it was first fed.
        uploaded.setdefault(killmail_id, report["uploaded"][str(sequence)])
    window = {i: t for i, t in uploaded.items() if since <= t <= until}
    stored = Killmail.objects.filter(killmail_id__in=window).values_list(
        "killmail_id", "created_at"
    )
    lags = [created.timestamp() - window[i] for i, created in stored]
    return lags, len(window)


def run() -> list[Row]:
    """Follow the feed for RUN_SECONDS; the lag, throughput and request-rate rows."""
    reset_data()
    VAR.mkdir(parents=True, exist_ok=True)
    with FakeProcess() as fake:
        fake.configure(live_rate=FEED_RATE)
        fake.reset()
        began_at, began = time.time(), time.monotonic()
        with open(VAR / "follow_live.log", "w") as log:
            subprocess.run(
                [PYTHON, "manage.py", "follow_live", "--seconds", str(RUN_SECONDS)],
                cwd=ROOT,
                env=subprocess_env(R2Z2_URL=fake.urls["r2z2_url"]),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
        elapsed = time.monotonic() - began
        stats = fake.stats()
        # Judged: what was uploaded after the warm-up and early enough to be read by the end.
        lags, fed = _lags(fake, began_at + WARMUP, began_at + elapsed - LAG_TARGET)
    requests = stats["r2z2_sequence"] + stats["r2z2_package"]
    mean = statistics.fmean(lags) if lags else float("inf")
    p95 = statistics.quantiles(lags, n=20)[-1] if len(lags) > 20 else float("inf")
    stored = len(lags)
    rate = requests / elapsed
    violations = stats["violation_count"]
    return [
        Row(
            "live: mean lag at 10 killmails/s",
            f"{mean:.2f} s (p95 {p95:.2f} s, max {max(lags, default=0):.2f} s)",
            f"< {LAG_TARGET:.0f} s",
            LAG_TARGET / mean if mean else None,
            mean < LAG_TARGET,
            f"{len(lags)} killmails judged",
        ),
        Row(
            "live: killmails stored / fed at 10 killmails/s",
            f"{stored} stored",
            "1 (keeps up)",
            stored / fed if fed else None,
            stored == fed > 0,
            f"killmails uploaded from {WARMUP} s into the run to {LAG_TARGET:.0f} s before its end",
            f"{fed} fed",
        ),
        Row(
            "live: R2Z2 requests a second",
            f"{rate:.2f}/s ({requests} requests, {violations} violations)",
            "<= 1, 0 violations",
            rate / R2Z2_LIMIT,
            rate <= R2Z2_LIMIT and violations == 0,
            anchor=f"{R2Z2_LIMIT:.0f}/s (the rule)",
        ),
    ]

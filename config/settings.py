"""Django settings, read from the environment in this one place (django-environ).

The embedded default needs no service: a SQLite file in the project and no broker, in which
case Celery tasks run in-process. Set DATABASE_URL and CELERY_BROKER_URL to run the same code
on PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEVELOPMENT_SECRET_KEY = "development-only-not-a-secret"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
# Production unless DJANGO_DEBUG=true: the demo, the tests and the benchmarks set it.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
if not DEBUG and SECRET_KEY == DEVELOPMENT_SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# Origins (scheme and host) that may POST to the admin through a proxy, e.g. https://kb.example.
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS. With DEBUG off every default is the safe one; each can be turned off for a
# deployment that needs it (say, HTTPS terminated by a proxy that already redirects).
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
# Seconds browsers remember to use HTTPS only; start at an hour, raise to a year (31536000)
# once HTTPS is known to work everywhere, since browsers cannot be told to forget it.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool(
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG
)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=not DEBUG)
if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
    # Only behind a proxy that sets this header itself: clients could forge it otherwise.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
# Load balancers and Prometheus ask these over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "killboard",
    "backfill",
    "enrichment",
    "live",
    "api",
    "monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Threads and processes share the file: readers must not block the writer (WAL), and a
    # transaction takes the write lock when it starts, so none fails half-way on upgrading.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
    # Tests too use a file: an in-memory database shares its cache between threads (the
    # CLI's runner, the live server) with table locks that fail at once instead of waiting.
    # Named after the database, so runs on different database files never share one.
    database_file = Path(DATABASES["default"]["NAME"])
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(
        database_file.with_name(f"test-{database_file.name}")
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Shared by every process (web, workers, beat): login throttling, beat's heartbeat and the
# ESI budgets the clients observed live here. The default is a table in the database
# (created by monitoring's migration); redis://127.0.0.1:6379/1 works as well.
CACHES = {"default": env.cache("CACHE_URL", default="dbcache://killboard_cache")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.db.DatabaseCache":
    # Beyond this many entries the table drops a third of them, expired ones first (>= 1000).
    CACHES["default"].setdefault("OPTIONS", {}).setdefault("MAX_ENTRIES", 10_000)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed admin logins (per username and address) or API token attempts (per address) after
# which further attempts are refused, the right password too (config.throttle; >= 1).
AUTH_FAILURE_LIMIT = env.int("AUTH_FAILURE_LIMIT", default=5)
# Seconds the refusal lasts, counted from the last failure (>= 1).
AUTH_LOCKOUT_SECONDS = env.int("AUTH_LOCKOUT_SECONDS", default=900)

# The GraphQL API (api/). The largest estimated cost of one operation (api.limits): about the
# values it can answer, a page's `limit` times what it selects. 50000 is a page of 20
# killmails with victim, attackers and items (>= 1).
GRAPHQL_MAX_COST = env.int("GRAPHQL_MAX_COST", default=50_000)
# Requests a minute per API token (or staff session), and per client address whatever the
# credentials (api.rates), counted in the shared cache above; 0 turns a limit off.
GRAPHQL_RATE_PER_MINUTE = env.int("GRAPHQL_RATE_PER_MINUTE", default=60)
GRAPHQL_ADDRESS_RATE_PER_MINUTE = env.int("GRAPHQL_ADDRESS_RATE_PER_MINUTE", default=120)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

# `text`, or `json`: one JSON object a line with job_id, killmail_id and task_id when known.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "monitoring.logs.JsonFormatter"},
    },
    "filters": {"context": {"()": "monitoring.logs.ContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
}

# Monitoring (monitoring/): /metrics answers loopback clients that came through no proxy,
# and anyone sending `Authorization: Bearer <METRICS_TOKEN>` (empty: loopback only).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# /healthz fails when beat's heartbeat (every 60 s) is older than this (seconds; 0: not
# checked). Checked only with a broker: the embedded default runs no beat.
HEALTH_BEAT_MAX_AGE_SECONDS = env.int("HEALTH_BEAT_MAX_AGE_SECONDS", default=180)

# Upstreams
ZKILLBOARD_API_URL = env.str("ZKILLBOARD_API_URL", default="https://zkillboard.com/api/")
ESI_URL = env.str("ESI_URL", default="https://esi.evetech.net/")
# Share of an announced ESI token bucket (X-Ratelimit-Limit) the deployment paces at, above
# 0 and at most 1; the rest is headroom, half of it for one burst after an idle spell.
ESI_BUCKET_SHARE = env.float("ESI_BUCKET_SHARE", default=0.8)
if not 0 < ESI_BUCKET_SHARE <= 1:
    raise ImproperlyConfigured(
        f"ESI_BUCKET_SHARE must be above 0 and at most 1, not {ESI_BUCKET_SHARE}."
    )
# ESI requests in flight at once across the deployment on route groups without a bucket
# (bound by ESI's error limit alone); at least 1.
ESI_CONCURRENCY = env.int("ESI_CONCURRENCY", default=8)
if ESI_CONCURRENCY < 1:
    raise ImproperlyConfigured(f"ESI_CONCURRENCY must be at least 1, not {ESI_CONCURRENCY}.")
# Requests per second to zKillboard from the whole deployment (zKillboard asks for about 1).
ZKILLBOARD_REQUESTS_PER_SECOND = env.float("ZKILLBOARD_REQUESTS_PER_SECOND", default=1.0)
# zKillboard's static host: the day dumps (history/) and the live feed (ephemeral/).
R2Z2_URL = env.str("R2Z2_URL", default="https://r2z2.zkillboard.com/")
# Requests per second to R2Z2 from the whole deployment (R2Z2 allows 15 per IP). The live
# follower alone needs about 11 at 10 killmails a second; 14 stays under R2Z2's 15.
R2Z2_REQUESTS_PER_SECOND = env.float("R2Z2_REQUESTS_PER_SECOND", default=14.0)
# The first UTC day R2Z2 publishes a raw dump for (history/raw/: full ESI killmails).
R2Z2_RAW_SINCE = date.fromisoformat(env.str("R2Z2_RAW_SINCE", default="2026-07-01"))
# Contact details put in the User-Agent of every upstream request, as both upstreams require.
EVE_CONTACT = env.str("EVE_CONTACT", default="admin@example.com")
FLOWER_URL = env.str("FLOWER_URL", default="")
# Seconds a worker owns a backfill page or a chunk of bodies; a killed worker's claim expires
# after this and another worker takes over. It must exceed the longest page fetch with its waits.
BACKFILL_LEASE_SECONDS = env.int("BACKFILL_LEASE_SECONDS", default=120)
# Seconds without progress after which the watchdog (beat) resumes a running job's steps:
# the net under every message a crash or a broker restart may have lost.
BACKFILL_STALLED_AFTER_SECONDS = env.int("BACKFILL_STALLED_AFTER_SECONDS", default=300)
# Hours an update (`backfill TYPE ID --update`) reads back before the last complete run began:
# zKillboard takes killmails up to 72 hours late, listed among those of their own time.
BACKFILL_UPDATE_OVERLAP_HOURS = env.int("BACKFILL_UPDATE_OVERLAP_HOURS", default=72)

# The live follower (`manage.py follow_live`, live.follower) of R2Z2's ephemeral feed.
# Seconds between two looks at sequence.json when caught up (0.1 to 60).
LIVE_POLL_SECONDS = env.float("LIVE_POLL_SECONDS", default=1.0)
# Seconds the published head may stand still before the follower probes head+1 even when the
# feed's pace does not say it is there yet (sequence.json moves only every 51 killmails).
LIVE_PROBE_AFTER_SECONDS = env.float("LIVE_PROBE_AFTER_SECONDS", default=6.0)
# Seconds before a sequence that answered 404 is asked again: R2Z2's rule is at least 6.
LIVE_NOT_FOUND_WAIT_SECONDS = env.float("LIVE_NOT_FOUND_WAIT_SECONDS", default=6.0)
# The longest backoff after errors in a row (network, 5xx, garbage, database), in seconds.
LIVE_MAX_BACKOFF_SECONDS = env.float("LIVE_MAX_BACKOFF_SECONDS", default=30.0)

# The coverage ledger (backfill.coverage). Days compared again with R2Z2's totals.json at
# every check whatever their count: killmails can be posted up to 72 hours late (days, >= 1).
COVERAGE_RECENT_DAYS = env.int("COVERAGE_RECENT_DAYS", default=4)
# Hours between two checks of the ledger by Celery beat (backfill.tasks.check_coverage, >= 1).
COVERAGE_CHECK_HOURS = env.int("COVERAGE_CHECK_HOURS", default=3)

# Celery: no broker means the embedded default, where tasks run in-process.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
if CELERY_TASK_ALWAYS_EAGER:
    # Never connected to; eager calls still build a producer, and kombu would guess localhost.
    CELERY_BROKER_URL = "memory://localhost/"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "zkillboard_backfill"
# enrichment.tasks.enrich_details has no route here: it is sent to the queue of its kind's
# entry in killboard.entities (tests/test_entities.py checks those are in config/queues.py).
CELERY_TASK_ROUTES = {
    "backfill.tasks.fetch_page": {"queue": "zkillboard_backfill"},
    "backfill.tasks.fetch_bodies": {"queue": "esi_killmail"},
    "backfill.tasks.plan_job": {"queue": "zkillboard_backfill"},
    "backfill.tasks.fetch_day": {"queue": "r2z2_history"},
    "backfill.tasks.check_coverage": {"queue": "r2z2_history"},
    "enrichment.tasks.resolve_names": {"queue": "esi_character_info_queue"},
    "enrichment.tasks.resolve_affiliations": {"queue": "esi_character_info_queue"},
    "enrichment.tasks.refresh_stale": {"queue": "esi_character_info_queue"},
    "backfill.tasks.resume_stalled_jobs": {"queue": "zkillboard_backfill"},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Workers keep the LOGGING above (LOG_FORMAT=json included) instead of Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A task queued while RabbitMQ restarts waits for it (about a minute) rather than failing
# after its own work is committed, which would break a job's chain of pages.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 40,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}

# Enrichment from ESI (names and details of the entities killmails reference).
# Details older than this are fetched again by refresh_stale, oldest first (hours, >= 1).
ENRICHMENT_MAX_AGE = timedelta(hours=env.int("ENRICHMENT_MAX_AGE_HOURS", default=24 * 7))
# An id /universe/names/ cannot resolve yet (new characters take hours) is retried after this.
NAME_RETRY_HOURS = env.int("NAME_RETRY_HOURS", default=6)
CELERY_BEAT_SCHEDULE = {
    "enrichment-refresh-stale": {
        "task": "enrichment.tasks.refresh_stale",
        "schedule": timedelta(hours=1),
        "options": {"queue": "esi_character_info_queue"},
    },
    "backfill-resume-stalled-jobs": {
        "task": "backfill.tasks.resume_stalled_jobs",
        "schedule": timedelta(seconds=min(60, BACKFILL_STALLED_AFTER_SECONDS / 4)),
    },
    "backfill-check-coverage": {
        "task": "backfill.tasks.check_coverage",
        "schedule": timedelta(hours=COVERAGE_CHECK_HOURS),
        "options": {"queue": "r2z2_history"},
    },
    # /healthz's "last beat": proves beat, the broker and a worker all move.
    "monitoring-beat-heartbeat": {
        "task": "monitoring.tasks.beat_heartbeat",
        "schedule": timedelta(seconds=60),
        "options": {"queue": "zkillboard_backfill", "expires": 60},
    },
}

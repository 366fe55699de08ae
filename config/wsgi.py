"""WSGI entry point for gunicorn."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Without a broker, the web process runs the work its requests hand off on its background
# runner (config.background); starting it here also takes up the jobs a previous process
# left behind, through backfill's watchdog.
from backfill.tasks import start_embedded_runner  # noqa: E402

start_embedded_runner()

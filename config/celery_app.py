"""The Celery application; configuration comes from Django settings (CELERY_*).

Every task is a `config.retries.RetryingTask`: one retry policy, and without a broker one
in-process runner.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("killboard", task_cls="config.retries:RetryingTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

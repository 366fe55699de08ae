"""Log lines as JSON (LOG_FORMAT=json), with the job, killmail and task they concern.

`ContextFilter` (on the console handler whatever the format) adds `task_id` from Celery's
current task, and `job_id` from that task's `job_id` argument when it has one. A log call
names what else it concerns with `extra`: `logger.warning("...", job_id, extra={"job_id":
job_id, "killmail_id": killmail_id})`. `JsonFormatter` writes one object a line: time, level,
logger, message, then whichever of job_id, killmail_id and task_id are known.
"""

from __future__ import annotations

import inspect
import json
import logging
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from celery import current_task

CONTEXT_FIELDS = ("job_id", "killmail_id", "task_id")


@lru_cache(maxsize=256)
def _job_id_position(task: Any) -> int | None:
    """Where a task takes `job_id` among its positional arguments (None: it takes none)."""
    try:
        names = list(inspect.signature(task.run).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("job_id") if "job_id" in names else None


def _task_context() -> dict[str, Any]:
    """task_id and job_id of the Celery task running in this thread, if any."""
    task = current_task
    request = getattr(task, "request", None) if task else None
    task_id = getattr(request, "id", None)
    if not task_id:
        return {}
    context: dict[str, Any] = {"task_id": task_id}
    kwargs = getattr(request, "kwargs", None) or {}
    if "job_id" in kwargs:
        context["job_id"] = kwargs["job_id"]
        return context
    position = _job_id_position(task._get_current_object())
    args = getattr(request, "args", None) or ()
    if position is not None and position < len(args):
        context["job_id"] = args[position]
    return context


class ContextFilter(logging.Filter):
    """Adds task_id (and job_id, when the task takes one) unless the call's `extra` did."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _task_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message and the known context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

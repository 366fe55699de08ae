"""The test run's settings: the project's own, in development mode.

Settings default to production (DJANGO_DEBUG off), which refuses the development secret key;
pytest-django reads this module (pyproject.toml) before any conftest runs, so this is where
a bare `pytest` turns development mode on. Processes the tests start inherit it.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_DEBUG", "true")

from config.settings import *  # noqa: F403

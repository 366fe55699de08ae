#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a management command."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # Settings refused to load (production without DJANGO_SECRET_KEY, a bad setting):
        # one line, as for any other bad input.
        sys.exit(f"ImproperlyConfigured: {exc}")


if __name__ == "__main__":
    main()

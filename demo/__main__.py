"""Import the bundled real killmails, export them again, and print what happened."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Run the demo on a SQLite file of its own."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{ROOT / 'var' / 'demo.sqlite3'}")
    (ROOT / "var").mkdir(exist_ok=True)
    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.core.management import call_command

    samples = sorted(str(path) for path in (ROOT / "tests" / "data" / "upstream").glob("*.json"))
    call_command("migrate", verbosity=0)
    call_command("import_killmails", *samples)
    call_command("export_killmails", "--output", str(ROOT / "var" / "demo-export.jsonl"))


if __name__ == "__main__":
    main()

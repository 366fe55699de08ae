"""Signals other apps listen to, so killboard depends on none of them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after a committed ingest batch stored new killmails, with `killmail_ids=[...]`.
killmails_stored = Signal()

"""Signals other apps listen to, so killboard depends on none of them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after a committed ingest batch stored new killmails, with `killmail_ids=[...]`.
killmails_stored = Signal()

# Sent on commit after rejected killmails left the quarantine (`killboard.quarantine`), with
# `counts={job_id: n}` (rows of each backfill job that left it) and `stored={job_id: n}` (of
# those, the killmails the retry stored; the others were stored already). Rows of no job are
# left out.
rejections_resolved = Signal()

# Sent by whoever is about to read an entity's details (a backfill plans its walk from its
# target's birthday or founding date), with `kind` (a `killboard.entities` kind) and
# `ids=[...]`: a receiver fetches those never fetched or stale before it returns.
entity_details_wanted = Signal()

"""Backfill jobs: the zKillboard client, the paging tasks, and the surfaces that start them."""

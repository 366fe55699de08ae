"""Killmails, their participants and items, and the entities they reference."""

"""Enrichment of entities from ESI: names and details."""

"""Benchmarks of ingest, backfill, enrichment and memory against PostgreSQL and the fake upstream.

`python -m benchmarks` (`make bench`) runs them all and prints one table. They are not tests:
they print figures and ratios measured in one run and assert nothing.
"""

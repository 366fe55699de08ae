"""Fake zKillboard and ESI upstreams for tests, the demo and benchmarks."""

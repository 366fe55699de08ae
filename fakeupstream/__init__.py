"""Fake zKillboard, ESI and R2Z2 upstreams for tests, the demo and benchmarks.

A development package of its own: standard library only, it imports nothing of the project and
nothing of ``tests/``, and carries the real samples it reads in ``data/``. ``python -m
fakeupstream`` runs it as a process; ``FakeUpstream`` runs it in a thread.
"""

"""Every call to an upstream, on one neutral layer the apps use and that uses no app.

- `http`: the one session factory (timeout, User-Agent with app, version and contact, gzip).
- `errors`: what can go wrong, by kind: rate limited, unavailable (transient), rejected
  (permanent), blocked. Each client's own exceptions subclass these kinds.
- `limiter`: the `Limiter` protocol the clients take their request slots from, the cap on
  waits an upstream names, and how long a call may wait inline.
- `zkillboard`, `esi`, `r2z2`: one client per upstream (zKillboard's pages and statistics,
  ESI, R2Z2's day dumps; R2Z2's live feed belongs in `r2z2` too).
- `clients`: the clients as this deployment runs them, built from the Django settings; the
  only module here that reads settings.

The rule: `upstream` imports no project app and no database layer (tests/test_architecture.py
checks it). The shared limiter needs a database row, so it lives in `killboard.ratelimit`,
and the apps hand it in: `clients.esi_client(ratelimit)`.
"""

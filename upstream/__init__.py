"""Every call to an upstream, on one neutral layer the apps use and that uses no app.

- `http`: the one session factory (timeout, User-Agent with app, version and contact, gzip).
- `errors`: what can go wrong, by kind: rate limited, unavailable (transient), rejected
  (permanent), blocked. Each client's own exceptions subclass these kinds.
- `limiter`: the `Limiter` protocol the clients take their request slots from, the cap on
  waits an upstream names, and how long a call may wait inline.
- `zkillboard`, `esi`: one client per upstream; the R2Z2 client (day dumps, live feed) will
  live here too.
- `clients`: the clients as this deployment runs them, built from the Django settings; the
  only module here that reads settings.

The rule: `upstream` imports no project app and no database layer (tests/test_architecture.py
checks it). The shared limiter needs a database row, so it lives in `killboard.ratelimit`,
and the apps hand it in: `clients.esi_client(ratelimit)`.
"""

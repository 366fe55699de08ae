"""`make demo`: a whole run offline, on the embedded default (SQLite, no broker)."""

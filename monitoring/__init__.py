"""Operations: Prometheus metrics read from the database, /healthz, and JSON log lines."""

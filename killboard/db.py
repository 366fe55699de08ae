"""The database connection, as the retry policy of every task (config.retries) sees it go away."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError, connection

# A lost database connection (a restart, a failover, a terminated backend). The work's
# transaction rolled back with it, so the work can be redone on a fresh connection.
DATABASE_ERRORS = (OperationalError, InterfaceError)


def drop_lost_connection() -> None:
    """Close the lost connection, so that the next query opens a fresh one.

    Inside an atomic block the block's owner must roll back first; it is left alone there.
    """
    if not connection.in_atomic_block:
        connection.close()

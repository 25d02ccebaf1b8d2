"""Reads that must see one consistent state of the database from their first row to their last
(exports): a read-only REPEATABLE READ transaction on PostgreSQL, a read transaction on SQLite
(WAL readers see the state as of their first read)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.db import connection, transaction


def snapshot_rows(rows: Callable[[], Iterator]) -> Iterator:
    """Yield what ``rows()`` yields, every query it makes inside one snapshot. A generator, so a
    streamed HTTP response holds the snapshot while it streams and ends it when the client is
    done (or gone). Inside an enclosing transaction (tests), that transaction is the snapshot."""
    outer = connection.in_atomic_block
    with transaction.atomic():
        if not outer and connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # must be the transaction's first statement
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield from rows()

"""Reads that must see one consistent state of the database from their first row to their last
(exports): a read-only REPEATABLE READ transaction on PostgreSQL. Not on SQLite (the embedded
default): its transactions begin IMMEDIATE (they take the write lock), so one held while an
export streams would stop every vote for as long as the download lasts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.db import connection, transaction


def snapshot_rows(rows: Callable[[], Iterator]) -> Iterator:
    """Yield what ``rows()`` yields, every query it makes inside one snapshot. A generator, so a
    streamed HTTP response holds the snapshot while it streams and ends it when the client is
    done (or gone). Inside an enclosing transaction (tests), that transaction is the snapshot."""
    if connection.vendor != "postgresql":
        yield from rows()
        return
    outer = connection.in_atomic_block
    with transaction.atomic():
        if not outer:
            with connection.cursor() as cursor:  # must be the transaction's first statement
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield from rows()

"""Hot statements compiled once per process (issue 13).

The ORM builds and compiles a query with subqueries in 1-3 ms of CPU, more than PostgreSQL
needs to run it, and a lease runs several. ``Prepared`` builds its query once (per database
vendor), with a stand-in value for each input, keeps the SQL, where each input lands among the
parameters and the ORM's converters for the columns (JSON, dates), and then runs that SQL with
the real values. The query is still written with the ORM (one place says what "open to an
annotator" means: ``annotation.access.comparisons_open_to``); only its compilation is reused.

On PostgreSQL the statement is also prepared on the server (once per connection): planning
these statements took PostgreSQL longer than running them (a hand-out's candidate: 1.2 ms to
plan, 0.6 ms to run). Its parameters are then bound on the server, not quoted into the text.
(A transaction-pooling PgBouncer between Django and PostgreSQL would need its prepared-statement
support, PgBouncer >= 1.21.)

Inputs are ints, floats, bools, datetimes or strings; an input may be given None (SQL NULL)
where the query only selects it. Stand-ins cannot collide with the queries' own constants (a
bool's positions are those that flip when the query is built again with it flipped).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db import connection
from django.db.models import QuerySet

# psycopg's count of runs before it prepares a statement by itself: never, in effect. Django's
# other cursors bind on the client and never prepare whatever this says.
_ONLY_WHEN_ASKED = 2**31 - 1


@functools.cache
def _preparing_cursor_class():
    """psycopg's server-binding cursor (Django's, with its ``callproc``) that prepares every
    statement it runs."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    class PreparingCursor(ServerBindingCursor):
        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True, binary=binary)

    return PreparingCursor


def _cursor():
    """A cursor for a prepared statement: Django's wrapper (query log, execute wrappers, error
    translation) around a preparing one on PostgreSQL; Django's own elsewhere."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:  # Django's default, under which psycopg prepares nothing, asked or not
        raw.prepare_threshold = _ONLY_WHEN_ASKED
    return connection._prepare_cursor(_preparing_cursor_class()(raw))


_STAND_IN_INT = -2_047_000_000  # in int4's range: Django may pass it as psycopg's Int4
_STAND_IN_TIME = datetime(1901, 2, 3, tzinfo=dt_timezone.utc)


def _split(built) -> tuple[QuerySet, str]:
    """A build's query and the template around its SQL."""
    return built if isinstance(built, tuple) else (built, "{select}")


class Prepared:
    def __init__(self, build: Callable[..., QuerySet | tuple[QuerySet, str]], **inputs: type):
        """``build(**stand_ins)``: the query (or the query and a template around its SQL, with
        ``{select}`` where its SELECT goes, e.g. an INSERT ... SELECT, or a locking clause after
        it). ``inputs``: name -> int, float, bool, datetime or str."""
        self._build, self._inputs, self._compiled, self._lock = build, inputs, {}, threading.Lock()

    def _stand_ins(self) -> dict:
        out = {}
        for i, (name, kind) in enumerate(self._inputs.items()):
            if kind is int:
                out[name] = _STAND_IN_INT - i
            elif kind is float:
                out[name] = _STAND_IN_INT - i - 0.25
            elif kind is bool:
                out[name] = True
            elif kind is datetime:
                out[name] = _STAND_IN_TIME + timedelta(seconds=i)
            elif kind is str:
                out[name] = f"\x1fstand-in {i}\x1f"
            else:
                raise TypeError(f"input {name}: int, float, bool, datetime or str, not {kind}")
        return out

    def _adapt(self, kind: type, value):
        return connection.ops.adapt_datetimefield_value(value) if kind is datetime and value is not None else value

    def _compile(self):
        stand_ins = self._stand_ins()
        qs, template = _split(self._build(**stand_ins))
        compiler = qs.query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        where: dict[str, list[int]] = {}
        for name, kind in self._inputs.items():
            if kind is bool:
                _sql, flipped = _split(self._build(**{**stand_ins, name: False}))[0].query.get_compiler(connection=connection).as_sql()
                where[name] = [(i, bool) for i, (p, q) in enumerate(zip(params, flipped)) if p is True and q is False]
                if not where[name]:
                    raise ValueError(f"input {name} does not reach the query's parameters")
                continue
            marker = self._adapt(kind, stand_ins[name])
            base = type(marker)
            # (position, the type the ORM gave it there: a subclass such as psycopg's Int4 is kept)
            where[name] = [(i, type(p)) for i, p in enumerate(params) if isinstance(p, base) and not isinstance(p, bool) and p == marker]
            if not where[name]:
                raise ValueError(f"input {name} does not reach the query's parameters")
        # a template around the SELECT (INSERT ... SELECT ... RETURNING) returns other columns;
        # one after it (a locking clause) the SELECT's
        selects = template.startswith("{select}")
        converters = compiler.get_converters([col for col, _, _ in compiler.select]) if selects else {}
        return template.format(select=sql), list(params), where, compiler, converters

    def rows(self, **values) -> list[tuple]:
        """Run the statement with these input values: its rows, converted as the ORM would."""
        key = connection.vendor
        if key not in self._compiled:
            with self._lock:
                self._compiled.setdefault(key, self._compile())
        sql, params, where, compiler, converters = self._compiled[key]
        params = list(params)
        for name, kind in self._inputs.items():
            value = self._adapt(kind, values[name])
            for i, typ in where[name]:
                # the ORM's type at that position (psycopg's Int4 for an int; a datetime subclass stays)
                params[i] = typ(value) if value is not None and not isinstance(value, typ) else value
        with _cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
        if converters:
            rows = [tuple(row) for row in compiler.apply_converters(rows, converters)]
        return rows


def columns(model, prefix: str = "") -> list[str]:
    """Every column of ``model`` (its concrete fields' attnames), each behind ``prefix`` (a
    relation's path, e.g. ``"comparison__"``), in the order ``instances`` reads them."""
    return [prefix + f.attname for f in model._meta.concrete_fields]


def instance(model, **values):
    """An instance of ``model`` with these fields read from the database (the others deferred)."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])


def instances(row, *models) -> list:
    """One instance per model from a row of their ``columns``, one after the other; what is left
    of the row (annotations) comes last, as a list."""
    values, out = list(row), []
    for model in models:
        names = columns(model)
        out.append(instance(model, **dict(zip(names, values[:len(names)]))))
        del values[:len(names)]
    return [*out, values]

"""A cheaper way to run the few statements of the small-upload hot path.

``Connection.execute`` of a Core statement costs about 100 us of CPU on SQLAlchemy's side
(cache key, execution context, result object) for a statement SQLite runs in 10-20 us; a small
upload runs about ten of them. :func:`execute` and :func:`first` compile a statement once
(per statement object and parameter names), then run it on the DBAPI cursor with the same
bind and result processors SQLAlchemy would apply: the same SQL, the same values in and out.

On SQLite (pysqlite) the statement runs on the sqlite3 connection; on PostgreSQL (asyncpg) on
SQLAlchemy's DBAPI adaptation of the asyncpg connection, which starts the transaction, keeps
the connection's prepared statements and waits for asyncpg as ``Connection.execute`` would.

Only for statements that need nothing else from SQLAlchemy: no Python-side column defaults
but constants, no expanding ``IN``, no ``RETURNING``. Anything else, and every other
dialect, goes through ``Connection.execute`` as before. The statement objects must be built
once (module constants, or cached like :func:`~tusserver.catalog.schema.update_by_id`): the
cache keeps them by identity.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

__all__ = ["execute", "execute_many", "first"]


@dataclass(slots=True)
class _Plan:
    sql: str
    #: Parameter names in the order of the statement's placeholders, with their processors.
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    #: Values fixed in the statement itself (not given at execution), by name.
    fixed: Mapping[str, Any]
    #: Result columns: key and SQLAlchemy type.
    columns: tuple[tuple[str, Any], ...]
    #: Their result processors, made at the first row (PostgreSQL's depend on the types the
    #: server describes, as SQLAlchemy's do).
    processors: list[tuple[str, Callable[[Any], Any] | None]] = field(default_factory=list)


#: Where an engine keeps its plans: (statement id, parameter names) -> (statement, plan or
#: None where the plain path must be used). Kept on the engine's dialect, whose SQL they are:
#: the connections of a PostgreSQL pool share them (compiling a statement costs a few ms,
#: once per connection was a good part of a fresh server's first thousands of uploads).
_PLANS_ATTR = "_tusserver_fastsql_plans"
_MAX_PLANS = 512

_Plans = dict[tuple[int, tuple[str, ...]], tuple[ClauseElement, "_Plan | None"]]


#: (dialect, driver) pairs with a fast path, and the paramstyle their plans are made for.
_PARAMSTYLES = {("sqlite", "pysqlite"): "qmark", ("postgresql", "asyncpg"): "numeric_dollar"}


def _plan(conn: Connection, stmt: ClauseElement, names: tuple[str, ...]) -> _Plan | None:
    dialect = conn.dialect
    if (dialect.name, dialect.driver) not in _PARAMSTYLES:
        # (One process may use several databases: tests, embedders. aiosqlite, used for an
        # in-memory catalog, has an asynchronous cursor.)
        return None
    plans: _Plans | None = getattr(dialect, _PLANS_ATTR, None)
    if plans is None:
        plans = {}
        setattr(dialect, _PLANS_ATTR, plans)
    key = (id(stmt), names)
    hit = plans.get(key)
    if hit is not None and hit[0] is stmt:
        return hit[1]
    plan = _compile(conn, stmt, names)
    if len(plans) >= _MAX_PLANS:
        plans.clear()
    # (The statement is kept with its plan: its id cannot be reused while it is cached.)
    plans[key] = (stmt, plan)
    return plan


def _compile(conn: Connection, stmt: ClauseElement, names: tuple[str, ...]) -> _Plan | None:
    dialect = conn.dialect
    if _PARAMSTYLES.get((dialect.name, dialect.driver)) != dialect.paramstyle:
        return None
    compiled: Any = stmt.compile(dialect=dialect, column_keys=list(names))
    # Python-side column defaults: constants are filled in as SQLAlchemy would; anything
    # else (a callable, a sequence) takes the plain path.
    defaults: dict[str, Any] = {}
    for column in getattr(compiled, "insert_prefetch", None) or ():
        default = column.default
        if default is None or not default.is_scalar:
            return None
        defaults[column.key] = default.arg
    # (``postfetch`` lists columns the database computes, such as ``attempts + 1`` in a SET:
    # Core fetches nothing back for them either, so they need nothing here.)
    if (
        getattr(compiled, "update_prefetch", None)
        or getattr(compiled, "returning", None)
        # (Numbered placeholders: PostgreSQL's $n, whose numbers follow positiontup; a
        # parameter used twice is one number.)
        or (getattr(compiled, "_numeric_binds", False) and dialect.paramstyle != "numeric_dollar")
        or any(b.expanding for b in compiled.binds.values())
        or compiled.positiontup is None
    ):
        return None
    processors = compiled._bind_processors
    binds = tuple((name, processors.get(name)) for name in compiled.positiontup)
    fixed = {
        name: b.effective_value
        for name, b in compiled.binds.items()
        if name not in names and not b.required
    }
    fixed.update((name, value) for name, value in defaults.items() if name not in names)
    if any(name not in names and name not in fixed for name, _ in binds):
        return None  # a parameter the caller must give is missing: let SQLAlchemy say so
    columns = tuple((rc[0], rc[3]) for rc in compiled._result_columns)
    return _Plan(compiled.string, binds, fixed, columns)


def _cursor(conn: Connection, plan: _Plan, params: Mapping[str, Any]) -> Any:
    values = []
    for name, proc in plan.binds:
        value = params[name] if name in params else plan.fixed[name]
        values.append(value if proc is None or value is None else proc(value))
    if conn.dialect.name != "sqlite":
        return _adapted_cursor(conn, plan.sql, values)
    raw: Any = conn.connection.driver_connection
    try:
        return raw.execute(plan.sql, values)
    except sqlite3.Error as exc:
        # The exception SQLAlchemy would raise (IntegrityError, OperationalError...): callers
        # and the runner (a lock held by another process) tell them apart by it.
        raise _wrap(exc, plan.sql, values) from exc


def _adapted_cursor(conn: Connection, sql: str, values: list[Any]) -> Any:
    """PostgreSQL: the statement on the DBAPI adaptation of asyncpg. A failure goes through
    SQLAlchemy's own handling: the same exception class, and a lost connection invalidated
    (with the pool's other connections) as ``Connection.execute`` would."""
    if not conn.in_transaction():
        # What Connection.execute does first: an explicit unit (Database.write) has begun
        # already; otherwise SQLAlchemy's own bookkeeping begins (and later ends) here.
        conn.begin()
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, values)
    except BaseException as exc:  # (cancellation too, as Connection.execute handles it)
        conn._handle_dbapi_exception(exc, sql, values, cursor, None)  # raises
        raise
    return cursor


def _wrap(exc: sqlite3.Error, sql: str, values: Any) -> Exception:
    return DBAPIError.instance(sql, values, exc, sqlite3.Error)


def execute(conn: Connection, stmt: Any, params: Mapping[str, Any] | None = None) -> int:
    """Run a statement that returns no rows (INSERT, UPDATE, DELETE); returns the rowcount."""
    params = params or {}
    plan = _plan(conn, stmt, tuple(params))
    if plan is None:
        return int(conn.execute(stmt, dict(params)).rowcount)
    cur = _cursor(conn, plan, params)
    try:
        return int(cur.rowcount)
    finally:
        cur.close()


def execute_many(conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run an INSERT (or UPDATE) once per row of ``rows``, which all have the same keys.

    On SQLite the rows go to the driver's ``executemany`` with their values processed here:
    a batch of analytics events or audit entries is written without SQLAlchemy building
    each row's parameters (that took tens of milliseconds per batch, holding the catalog's
    connection and the GIL). Elsewhere, and for statements without a plan,
    ``Connection.execute`` with the list, as before.
    """
    if not rows:
        return
    names = tuple(rows[0])
    plan = _plan(conn, stmt, names) if conn.dialect.name == "sqlite" else None
    keys = rows[0].keys()
    if plan is None or any(row.keys() != keys for row in rows):
        conn.execute(stmt, [dict(row) for row in rows])
        return
    binds, fixed = plan.binds, plan.fixed
    values = [
        [
            v if proc is None or v is None else proc(v)
            for name, proc in binds
            for v in (row[name] if name in row else fixed[name],)
        ]
        for row in rows
    ]
    raw: Any = conn.connection.driver_connection
    try:
        raw.executemany(plan.sql, values)
    except sqlite3.Error as exc:
        raise _wrap(exc, plan.sql, values[:1]) from exc


def first(conn: Connection, stmt: Any, params: Mapping[str, Any] | None = None) -> Any:
    """The first row of a SELECT as a mapping of column keys to values, or None."""
    params = params or {}
    plan = _plan(conn, stmt, tuple(params))
    if plan is None:
        return conn.execute(stmt, dict(params)).mappings().first()
    cur = _cursor(conn, plan, params)
    try:
        row = cur.fetchone()
        if row is not None and not plan.processors:
            plan.processors = _processors(conn, plan, cur.description)
    except sqlite3.Error as exc:
        raise _wrap(exc, plan.sql, params) from exc
    finally:
        cur.close()
    if row is None:
        return None
    return {
        key: value if proc is None or value is None else proc(value)
        for (key, proc), value in zip(plan.processors, row, strict=True)
    }


def _processors(
    conn: Connection, plan: _Plan, description: Any
) -> list[tuple[str, Callable[[Any], Any] | None]]:
    """The result processors of the plan's columns, for the column types the cursor
    describes (what SQLAlchemy's result object would use)."""
    dialect = conn.dialect
    return [
        (key, type_._cached_result_processor(dialect, desc[1]))
        for (key, type_), desc in zip(plan.columns, description, strict=True)
    ]

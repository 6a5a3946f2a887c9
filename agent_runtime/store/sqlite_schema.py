"""The SQLite store's schema and row mapping: migrations, columns, the SQL of each write,
and the helpers that run inside one connection (pure functions of a ``sqlite3``
connection; called on the store's worker thread only)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import InvalidRequest, NotFound
from ..objects import Message, Run, RunStep, Thread
from .base import Order

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "INSERT_THREAD",
    "MESSAGE_COLUMNS",
    "RUN_COLUMNS",
    "STEP_COLUMNS",
    "THREAD_COLUMNS",
    "UPDATE_MESSAGE",
    "UPSERT_MESSAGE",
    "UPSERT_RUN",
    "UPSERT_STEP",
    "decode_row",
    "encode_row",
    "select_page",
    "require_run",
    "require_thread",
    "thread_not_found",
    "transaction",
]

T = TypeVar("T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Version 1.
    (
        """
        CREATE TABLE threads (
            id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            metadata TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            status TEXT NOT NULL,
            run_id TEXT,
            assistant_id TEXT,
            metadata TEXT NOT NULL,
            completed_at INTEGER,
            incomplete_at INTEGER,
            incomplete_reason TEXT,
            UNIQUE (thread_id, id)
        )
        """,
        "CREATE INDEX messages_by_thread ON messages (thread_id, seq)",
        "CREATE INDEX messages_by_run ON messages (thread_id, run_id, seq)",
        """
        CREATE TABLE runs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
            assistant_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            model TEXT NOT NULL,
            status TEXT NOT NULL,
            instructions TEXT,
            metadata TEXT NOT NULL,
            started_at INTEGER,
            cancelled_at INTEGER,
            failed_at INTEGER,
            completed_at INTEGER,
            last_error TEXT,
            incomplete_reason TEXT,
            last_event_id INTEGER,
            UNIQUE (thread_id, id)
        )
        """,
        "CREATE INDEX runs_by_thread ON runs (thread_id, seq)",
        "CREATE INDEX runs_by_status ON runs (status)",
    ),
    # Version 2: threads belong to the API key that created them (a digest of it).
    ("ALTER TABLE threads ADD COLUMN owner TEXT",),
    # Version 3: each run's compacted event log (checkpointed while it streams).
    (
        """
        CREATE TABLE run_logs (
            thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
            run_id TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (thread_id, run_id)
        )
        """,
    ),
    # Version 4: run steps (tool calls, child runs), each its ``thread.run.step`` object.
    (
        """
        CREATE TABLE run_steps (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            body TEXT NOT NULL,
            UNIQUE (thread_id, id),
            FOREIGN KEY (thread_id, run_id) REFERENCES runs (thread_id, id) ON DELETE CASCADE
        )
        """,
        "CREATE INDEX run_steps_by_run ON run_steps (thread_id, run_id, seq)",
    ),
)
"""``MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)

_JSON_COLUMNS = frozenset({"metadata", "last_error", "body"})
# Columns follow the dataclasses' fields: a new field without a migration fails loudly.
THREAD_COLUMNS = tuple(f.name for f in dataclasses.fields(Thread))
MESSAGE_COLUMNS = tuple(f.name for f in dataclasses.fields(Message))
RUN_COLUMNS = tuple(f.name for f in dataclasses.fields(Run))
STEP_COLUMNS = tuple(f.name for f in dataclasses.fields(RunStep))


def encode_row(obj: Thread | Message | Run | RunStep, columns: Sequence[str]) -> tuple[Any, ...]:
    """The row's values: a snapshot of ``obj``, JSON columns as text."""
    values: list[Any] = []
    for name in columns:
        value = getattr(obj, name)
        if name in _JSON_COLUMNS and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        values.append(value)
    return tuple(values)


def decode_row(row: sqlite3.Row, columns: Sequence[str]) -> dict[str, Any]:
    return {
        name: json.loads(row[name])
        if name in _JSON_COLUMNS and row[name] is not None
        else row[name]
        for name in columns
    }


def _upsert_sql(table: str, columns: Sequence[str]) -> str:
    """Insert, or replace every column of the row with the same (thread_id, id), keeping
    its place in the list (its ``seq``), as MemoryStore's dictionaries do."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("id", "thread_id"))
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT (thread_id, id) DO UPDATE SET {updates}"
    )


INSERT_THREAD = (
    f"INSERT INTO threads ({', '.join(THREAD_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in THREAD_COLUMNS)})"
)
UPSERT_MESSAGE = _upsert_sql("messages", MESSAGE_COLUMNS)
UPSERT_RUN = _upsert_sql("runs", RUN_COLUMNS)
UPSERT_STEP = _upsert_sql("run_steps", STEP_COLUMNS)
UPDATE_MESSAGE = (
    "UPDATE messages SET "
    + ", ".join(f"{c} = ?" for c in MESSAGE_COLUMNS if c not in ("id", "thread_id"))
    + " WHERE thread_id = ? AND id = ?"
)


def thread_not_found(thread_id: str) -> NotFound:
    return NotFound(f"No thread found with id '{thread_id}'.", param="thread_id")


def require_thread(conn: sqlite3.Connection, thread_id: str) -> None:
    if conn.execute("SELECT 1 FROM threads WHERE id = ?", (thread_id,)).fetchone() is None:
        raise thread_not_found(thread_id)


def require_run(conn: sqlite3.Connection, thread_id: str, run_id: str) -> None:
    require_thread(conn, thread_id)
    row = conn.execute(
        "SELECT 1 FROM runs WHERE thread_id = ? AND id = ?", (thread_id, run_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"No run found with id '{run_id}'.", param="run_id")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, committed on success, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def select_page(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    where: str,
    params: tuple[Any, ...],
    *,
    order: Order,
    limit: int,
    after: str | None,
    before: str | None,
) -> tuple[list[dict[str, Any]], bool]:
    """:func:`~agent_runtime.store.memory.paginate`'s semantics, in SQL over ``seq``."""
    ascending = order == "asc"
    clauses = [where]
    values = list(params)
    for name, cursor, newer in (("after", after, ascending), ("before", before, not ascending)):
        if cursor is None:
            continue
        row = conn.execute(
            f"SELECT seq FROM {table} WHERE {where} AND id = ?", (*params, cursor)
        ).fetchone()
        if row is None:
            raise InvalidRequest(f"no object with id {cursor!r} in this list", param=name)
        clauses.append("seq > ?" if newer else "seq < ?")
        values.append(row["seq"])
    # One row more than the page tells whether there are more; a negative limit slices
    # like Python's ``window[:limit]`` over the whole window.
    values.append(limit + 1 if limit >= 0 else -1)
    rows = conn.execute(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(clauses)} "
        f"ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?",
        values,
    ).fetchall()
    return [decode_row(row, columns) for row in rows[:limit]], len(rows) > limit

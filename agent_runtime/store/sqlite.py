"""A durable store: one SQLite database file, behind the same interface as MemoryStore.

Threading model
    Every operation runs on one dedicated worker thread (a single-worker
    ``ThreadPoolExecutor``) that owns the store's only ``sqlite3`` connection; no SQLite
    call ever runs on the event loop, and the connection never leaves its thread. Each
    public method is a coroutine that, before its first suspension, encodes its arguments
    (a snapshot: later changes to the objects passed in are not stored, as with
    MemoryStore's copies) and queues one job; then it awaits the job's result. Jobs run
    one at a time in the order they were queued, so operations apply in the order they
    were called (the order the calling coroutines started): a run's ``cancelling`` write
    cannot land after its final status. A caller cancelled while waiting does not cancel
    its operation: the operation is applied anyway, as MemoryStore would have applied it.

One process per directory
    Opening the database first takes the exclusive lock of its directory (see
    :mod:`.lock`), held until :meth:`SQLiteStore.close`: a second store on the same
    directory, in this process or another, fails to open with ``DataDirInUse`` naming the
    holder's pid. An unusable directory or database fails with ``DataDirError``.

Durability
    Every write is committed (one transaction per operation) before its coroutine
    returns. The database runs in WAL mode with ``synchronous=NORMAL``: a committed write
    survives the process being killed at any point (SIGKILL included); on an operating
    system crash or power loss the last few commits may be lost, but the database stays
    consistent. :meth:`SQLiteStore.close` waits for every queued operation, then closes
    the connection (which checkpoints the WAL) and the worker thread.

Schema
    Tables ``threads``, ``messages``, ``runs`` and ``run_steps``; ``metadata``,
    ``last_error`` and a step's ``body`` (its ``thread.run.step`` object) are JSON text.
    Messages, runs and steps are listed in insertion order, by an autoincrement ``seq``
    column (``created_at`` has one-second resolution). Deleting a thread cascades to its
    messages and runs, and a run's deletion to its steps. ``PRAGMA user_version`` holds the
    schema version; :data:`MIGRATIONS` brings an older database up to date when it is
    opened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import AgentRuntimeError, DataDirError, NotFound, StorageUnavailable
from ..objects import LIVE_STATUSES, Message, Run, RunStep, Thread, now
from .base import Order, Page, Store
from .lock import DirectoryLock
from .sqlite_schema import (
    INSERT_THREAD,
    MESSAGE_COLUMNS,
    MIGRATIONS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    STEP_COLUMNS,
    THREAD_COLUMNS,
    UPDATE_MESSAGE,
    UPSERT_MESSAGE,
    UPSERT_RUN,
    UPSERT_STEP,
    decode_row,
    encode_row,
    require_run,
    require_thread,
    select_page,
    thread_not_found,
    transaction,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")


def _unusable(directory: Path, exc: OSError | sqlite3.Error) -> DataDirError:
    """``exc`` (from creating, locking or opening the database) as one line."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return DataDirError(f"cannot use data directory {directory}: {reason}")


def _insert_thread(
    conn: sqlite3.Connection, thread_id: str, values: Sequence[Any], messages: list[Any]
) -> None:
    """A new thread holding ``messages`` (rows); within the caller's transaction."""
    # A thread created again starts empty, as in MemoryStore.
    conn.execute("DELETE FROM threads WHERE id = ?", (thread_id,))
    conn.execute(INSERT_THREAD, values)
    for row in messages:
        conn.execute(UPSERT_MESSAGE, row)


class SQLiteStore:
    """The thread/message/run store in the SQLite database at ``path``.

    Prefer ``await SQLiteStore.open(path)``, which opens the database at once (so a bad
    path fails there); a store made with ``SQLiteStore(path)`` opens it at its first
    operation. Always ``await store.aclose()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="agentstream-sqlite"
        )
        self._conn: sqlite3.Connection | None = None
        """Only ever touched on the worker thread."""
        self._closing: concurrent.futures.Future[None] | None = None
        self._lock = DirectoryLock(self.path.parent)
        """Held from opening to closing: one process per directory (worker thread only)."""

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SQLiteStore:
        """Create the parent directory and the database if needed, migrate its schema."""
        store = cls(path)
        try:
            await store._run(lambda _conn: None)
        except BaseException:
            await store.aclose()
            raise
        return store

    # -- the worker ------------------------------------------------------------------

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Queue ``job(connection)`` on the worker thread and await its result.

        Queued synchronously (before this coroutine first suspends), so jobs run in call
        order; shielded, so cancelling the caller never drops a queued job.
        """
        if self._closing is not None:
            raise AgentRuntimeError("the SQLite store is closed")
        done = self._executor.submit(self._in_worker, job)
        return await asyncio.shield(asyncio.wrap_future(done))

    def _in_worker(self, job: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._conn is None:
                self._conn = self._connect()
            return job(self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        """The store's failure as one clear sentence naming the cause and the folder."""
        where = self.path.parent
        text = str(exc)
        lowered = text.lower()
        errno = getattr(exc, "errno", None)
        if "full" in lowered or errno == 28:  # SQLITE_FULL, ENOSPC
            cause = f"the data directory {where} is full"
        elif "readonly" in lowered or "read-only" in lowered or errno in (1, 13, 30):
            cause = f"the data directory {where} is not writable"
        elif "unable to open" in lowered or isinstance(exc, OSError):
            cause = f"the database in {where} cannot be opened"
        elif "locked" in lowered or "busy" in lowered:
            cause = f"the database in {where} is locked by another process"
        else:
            cause = f"the database in {where} failed"
        return StorageUnavailable(f"{cause} ({text})")

    def _connect(self) -> sqlite3.Connection:
        """Create the directory, take its lock, open and migrate the database.

        An unusable directory or database raises :class:`DataDirError` (one line naming
        the directory and the reason), a locked one :class:`DataDirInUse`; the lock is
        not kept when opening fails.
        """
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except FileExistsError:
            raise DataDirError(f"cannot use data directory {directory}: not a directory") from None
        except OSError as exc:
            raise _unusable(directory, exc) from None
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; writes use transaction().
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self._lock.release()
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise _unusable(directory, exc) from None
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with transaction(conn):
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise AgentRuntimeError(
                    f"{self.path} has schema version {version}; this agentstream knows "
                    f"versions up to {SCHEMA_VERSION} (upgrade agentstream to open it)"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._lock.release()

    async def aclose(self) -> None:
        """Wait for every queued operation, then close the database and the worker thread.
        Idempotent; later operations raise ``AgentRuntimeError``."""
        if self._closing is None:
            self._closing = self._executor.submit(self._disconnect)
        await asyncio.shield(asyncio.wrap_future(self._closing))
        # The worker has nothing left to do: this only lets its thread exit and joins it.
        self._executor.shutdown(wait=True)

    # -- threads ---------------------------------------------------------------------

    async def create_thread(self, thread: Thread, messages: Sequence[Message] = ()) -> None:
        values = encode_row(thread, THREAD_COLUMNS)
        rows = [encode_row(m, MESSAGE_COLUMNS) for m in messages]

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                _insert_thread(conn, thread.id, values, rows)

        await self._run(job)

    async def get_thread(self, thread_id: str) -> Thread:
        def job(conn: sqlite3.Connection) -> Thread:
            row = conn.execute(
                f"SELECT {', '.join(THREAD_COLUMNS)} FROM threads WHERE id = ?", (thread_id,)
            ).fetchone()
            if row is None:
                raise thread_not_found(thread_id)
            return Thread(**decode_row(row, THREAD_COLUMNS))

        return await self._run(job)

    async def delete_thread(self, thread_id: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if conn.execute("DELETE FROM threads WHERE id = ?", (thread_id,)).rowcount == 0:
                    raise thread_not_found(thread_id)

        await self._run(job)

    async def count_unowned_threads(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COUNT(*) FROM threads WHERE owner IS NULL").fetchone()
            return int(row[0])

        return await self._run(job)

    async def adopt_unowned_threads(self, owner: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                cursor = conn.execute("UPDATE threads SET owner = ? WHERE owner IS NULL", (owner,))
                return int(cursor.rowcount)

        return await self._run(job)

    # -- messages --------------------------------------------------------------------

    async def add_message(self, message: Message) -> None:
        values = encode_row(message, MESSAGE_COLUMNS)
        thread_id = message.thread_id

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                require_thread(conn, thread_id)
                conn.execute(UPSERT_MESSAGE, values)

        await self._run(job)

    async def update_message(self, message: Message) -> None:
        encoded = dict(zip(MESSAGE_COLUMNS, encode_row(message, MESSAGE_COLUMNS), strict=True))
        thread_id, message_id = message.thread_id, message.id
        values = [v for c, v in encoded.items() if c not in ("id", "thread_id")]

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                require_thread(conn, thread_id)
                if conn.execute(UPDATE_MESSAGE, (*values, thread_id, message_id)).rowcount == 0:
                    raise NotFound(f"No message found with id '{message_id}'.", param="message_id")

        await self._run(job)

    async def get_message(self, thread_id: str, message_id: str) -> Message:
        def job(conn: sqlite3.Connection) -> Message:
            require_thread(conn, thread_id)
            row = conn.execute(
                f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE thread_id = ? AND id = ?",
                (thread_id, message_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"No message found with id '{message_id}'.", param="message_id")
            return Message(**decode_row(row, MESSAGE_COLUMNS))

        return await self._run(job)

    async def list_messages(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> Page[Message]:
        where: str = "thread_id = ?"
        params: tuple[str, ...] = (thread_id,)
        if run_id is not None:
            where, params = "thread_id = ? AND run_id = ?", (thread_id, run_id)

        def job(conn: sqlite3.Connection) -> Page[Message]:
            require_thread(conn, thread_id)
            rows, has_more = select_page(
                conn,
                "messages",
                MESSAGE_COLUMNS,
                where,
                params,
                order=order,
                limit=limit,
                after=after,
                before=before,
            )
            return Page([Message(**row) for row in rows], has_more)

        return await self._run(job)

    # -- runs ------------------------------------------------------------------------

    async def _upsert_run(self, run: Run) -> None:
        values = encode_row(run, RUN_COLUMNS)
        thread_id = run.thread_id

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                require_thread(conn, thread_id)
                conn.execute(UPSERT_RUN, values)

        await self._run(job)

    async def create_run(
        self, run: Run, *, messages: Sequence[Message] = (), thread: Thread | None = None
    ) -> None:
        """The new thread (if any), the messages and the run: one transaction."""
        run_values = encode_row(run, RUN_COLUMNS)
        rows = [encode_row(m, MESSAGE_COLUMNS) for m in messages]
        thread_values = None if thread is None else encode_row(thread, THREAD_COLUMNS)
        thread_id = run.thread_id

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if thread_values is None:
                    require_thread(conn, thread_id)
                    for row in rows:
                        conn.execute(UPSERT_MESSAGE, row)
                else:
                    _insert_thread(conn, thread_id, thread_values, rows)
                conn.execute(UPSERT_RUN, run_values)

        await self._run(job)

    async def update_run(self, run: Run) -> None:
        """Stores the run, whether or not it was created before (as MemoryStore does)."""
        await self._upsert_run(run)

    async def get_run(self, thread_id: str, run_id: str) -> Run:
        def job(conn: sqlite3.Connection) -> Run:
            require_thread(conn, thread_id)
            row = conn.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE thread_id = ? AND id = ?",
                (thread_id, run_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"No run found with id '{run_id}'.", param="run_id")
            return Run(**decode_row(row, RUN_COLUMNS))

        return await self._run(job)

    async def list_runs(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Run]:
        def job(conn: sqlite3.Connection) -> Page[Run]:
            require_thread(conn, thread_id)
            rows, has_more = select_page(
                conn,
                "runs",
                RUN_COLUMNS,
                "thread_id = ?",
                (thread_id,),
                order=order,
                limit=limit,
                after=after,
                before=before,
            )
            return Page([Run(**row) for row in rows], has_more)

        return await self._run(job)

    async def save_run_log(self, thread_id: str, run_id: str, log: dict[str, Any]) -> None:
        data = json.dumps(log, ensure_ascii=False, separators=(",", ":"))

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                require_thread(conn, thread_id)
                conn.execute(
                    "INSERT INTO run_logs (thread_id, run_id, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (thread_id, run_id) DO UPDATE SET data = excluded.data",
                    (thread_id, run_id, data),
                )

        await self._run(job)

    async def get_run_log(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        def job(conn: sqlite3.Connection) -> dict[str, Any] | None:
            require_thread(conn, thread_id)
            row = conn.execute(
                "SELECT data FROM run_logs WHERE thread_id = ? AND run_id = ?",
                (thread_id, run_id),
            ).fetchone()
            return None if row is None else dict(json.loads(row["data"]))

        return await self._run(job)

    async def mark_interrupted_runs(self, message: str) -> list[Run]:
        """Set every live run (queued, in_progress, cancelling: live when a previous
        process died) to ``failed`` with ``last_error`` ``{"code": "server_error",
        "message": message}``, and its steps still ``in_progress`` too; returns the runs,
        oldest first."""
        live = sorted(LIVE_STATUSES)
        failure = {"code": "server_error", "message": message}
        error = json.dumps(failure, ensure_ascii=False)

        def job(conn: sqlite3.Connection) -> list[Run]:
            stamp = now()
            with transaction(conn):
                rows = conn.execute(
                    "UPDATE runs SET status = 'failed', failed_at = ?, last_error = ? "
                    f"WHERE status IN ({', '.join('?' for _ in live)}) "
                    f"RETURNING seq, {', '.join(RUN_COLUMNS)}",
                    (stamp, error, *live),
                ).fetchall()
                for row in rows:
                    _fail_open_steps(conn, row["thread_id"], row["id"], stamp, failure)
            rows.sort(key=lambda row: int(row["seq"]))
            return [Run(**decode_row(row, RUN_COLUMNS)) for row in rows]

        return await self._run(job)

    # -- run steps -------------------------------------------------------------------

    async def put_step(self, step: RunStep) -> None:
        values = encode_row(step, STEP_COLUMNS)
        thread_id, run_id = step.thread_id, step.run_id

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                require_run(conn, thread_id, run_id)
                conn.execute(UPSERT_STEP, values)

        await self._run(job)

    async def get_step(self, thread_id: str, run_id: str, step_id: str) -> RunStep:
        def job(conn: sqlite3.Connection) -> RunStep:
            require_run(conn, thread_id, run_id)
            row = conn.execute(
                f"SELECT {', '.join(STEP_COLUMNS)} FROM run_steps "
                "WHERE thread_id = ? AND run_id = ? AND id = ?",
                (thread_id, run_id, step_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"No step found with id '{step_id}'.", param="step_id")
            return RunStep(**decode_row(row, STEP_COLUMNS))

        return await self._run(job)

    async def list_steps(
        self,
        thread_id: str,
        run_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[RunStep]:
        def job(conn: sqlite3.Connection) -> Page[RunStep]:
            require_run(conn, thread_id, run_id)
            rows, has_more = select_page(
                conn,
                "run_steps",
                STEP_COLUMNS,
                "thread_id = ? AND run_id = ?",
                (thread_id, run_id),
                order=order,
                limit=limit,
                after=after,
                before=before,
            )
            return Page([RunStep(**row) for row in rows], has_more)

        return await self._run(job)


def _fail_open_steps(
    conn: sqlite3.Connection, thread_id: str, run_id: str, stamp: int, error: dict[str, str]
) -> None:
    """The run's steps still ``in_progress`` become ``failed`` (in the caller's
    transaction)."""
    rows = conn.execute(
        "SELECT id, body FROM run_steps WHERE thread_id = ? AND run_id = ?", (thread_id, run_id)
    ).fetchall()
    for row in rows:
        body = json.loads(row["body"])
        if body.get("status") != "in_progress":
            continue
        body |= {"status": "failed", "failed_at": stamp, "last_error": dict(error)}
        conn.execute(
            "UPDATE run_steps SET body = ? WHERE thread_id = ? AND id = ?",
            (json.dumps(body, ensure_ascii=False), thread_id, row["id"]),
        )


if TYPE_CHECKING:

    def _implements_store(store: SQLiteStore) -> Store:
        """mypy checks here that SQLiteStore implements the Store protocol."""
        return store

"""One process per data directory: an exclusive ``flock`` on a lock file inside it.

Two hubs on one SQLite database corrupt each other's view of it (the second marks the
first's live runs failed at start-up). :class:`DirectoryLock` is taken before the database
is opened and held until the store closes. The holder's pid is written into the file so
that a refused process can name it.

The lock is an advisory ``fcntl.flock`` on an open file description: the kernel releases
it when the holder closes the file or dies (SIGKILL included), so a stale file never
blocks a restart. The file itself is left in place (removing it would let two processes
lock two different files). Its descriptor is not inherited by child processes (Python
opens files non-inheritable). Blocking-free: :meth:`acquire` fails at once when the lock
is held; call it from any thread, but from one thread at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import DataDirInUse

__all__ = ["LOCK_NAME", "DirectoryLock"]

LOCK_NAME = "agentstream.lock"


class DirectoryLock:
    """The exclusive lock of the directory ``path`` (its file :data:`LOCK_NAME`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.file = self.path / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's pid into the file.

        Raises :class:`~agent_runtime.errors.DataDirInUse` (naming the holder's pid) when
        another open of the file holds it, in this process or another; ``OSError`` when the
        file cannot be created or opened. Idempotent while held.
        """
        if self._fd is not None:
            return
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirInUse(str(self.path), pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # releases the lock
            raise
        self._fd = fd

    def release(self) -> None:
        """Empty the file (no pid is shown for a lock nobody holds) and release the lock.
        Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, if it has written one yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

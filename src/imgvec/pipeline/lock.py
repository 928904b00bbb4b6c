"""One ingest per index at a time, enforced by an OS file lock.

flock is released by the kernel when its process dies, even by kill -9, so a crashed run never leaves a stale
lock behind, and "is the lock held?" tells a live run from a killed one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from imgvec.errors import IndexBusyError


class IndexLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexBusyError(
                f"another ingest into this index is running (pid {holder}); wait for it to finish, "
                "or stop it (Ctrl-C or kill) and run this command again to continue"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def is_held(self) -> bool:
        """True while some process (this one included) holds the lock."""
        if self._fd is not None:
            return True
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> IndexLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

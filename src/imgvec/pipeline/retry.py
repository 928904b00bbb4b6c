"""Exponential backoff with full jitter, for errors that a second try can fix (I/O hiccups, a busy store)."""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE, errno.ECONNRESET, errno.EINTR}
)
"""Read errors worth retrying: a NAS that stalls or drops a connection. ENOENT or EACCES never get better."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(max, base * 2^attempt)]."""
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))

    def call(
        self,
        operation: Callable[[], T],
        is_transient: Callable[[BaseException], bool],
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        for attempt in range(self.attempts):
            try:
                return operation()
            except Exception as exc:
                if attempt == self.attempts - 1 or not is_transient(exc):
                    raise
                sleep(self.delay(attempt))
        raise AssertionError("unreachable")


def is_transient_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS

"""A line when a service keeps us waiting: an endpoint that accepts the connection and then says nothing is
otherwise indistinguishable from a hung imgvec."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("imgvec")

ACCESS_CHECK_SECONDS = 10.0
"""How long the first request to a store or a bucket may take before the command gives up on it: a healthy
service answers in milliseconds; the normal, patient timeouts apply once it has answered."""
SAY_AFTER_SECONDS = 2.0


@contextmanager
def announced(what: str, *, after: float = SAY_AFTER_SECONDS) -> Iterator[None]:
    """Log (at WARNING, so the CLI shows it) that we are waiting for ``what`` when it takes over ``after`` s."""
    timer = threading.Timer(after, log.warning, (f"waiting for {what}",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()

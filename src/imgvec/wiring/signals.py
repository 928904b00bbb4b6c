"""Signals scoped to a run: Ctrl-C and SIGTERM finish the batch in hand."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Stoppable(Protocol):
    def stop(self) -> None: ...

    @property
    def stopping(self) -> bool: ...


@contextmanager
def stop_on_signals(run: Stoppable, announce: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM finish the batch in hand, save state and end cleanly; a second Ctrl-C aborts
    (KeyboardInterrupt). The handlers are the previous ones again afterwards."""

    def stop(signum: int, _frame: object) -> None:
        if run.stopping:
            raise KeyboardInterrupt
        announce(f"{signal.Signals(signum).name}: finishing the current batch, then stopping")
        run.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

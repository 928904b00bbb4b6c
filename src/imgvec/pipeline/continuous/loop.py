"""The skeleton ``Watcher`` and ``Follower`` share: one indexer session (lock, journal, workers) for the life of
the service; a step, then a pause; a step that fails is logged and the pause grows (``Recovery``); the run's
health written where ``imgvec progress`` and /metrics read it; ``stop()`` from a signal ends it after the step in
hand. Each says only what its step is, what it does first and after an error, and what its health holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imgvec.pipeline.continuous.recovery import Recovery
from imgvec.pipeline.indexer import Indexer


class ContinuousRun:
    mode: str = ""
    """The session's mode in the journal (``watch``, ``follow``)."""

    def __init__(self, indexer: Indexer, log: Callable[[str], None], *, then: str) -> None:
        """``then``: what follows an error's pause, for its log line (", then a pass catches up")."""
        self.indexer = indexer
        self.log = log
        self.recovery = Recovery(log, then=then)

    def stop(self) -> None:
        self.indexer.stop()

    @property
    def stopping(self) -> bool:
        return self.indexer.stopping

    def run(self) -> None:
        with self.indexer.session(mode=self.mode):
            try:
                self.start()
                while not self.stopping:
                    if not self.recovery.attempt(self.step):
                        self.after_error()
                    self.heartbeat()
                    self.indexer.wait(self.recovery.pause(self.interval()))
            finally:
                self.finish()
                self.heartbeat(force=True)

    # -- what each run says for itself ----------------------------------------------------------------

    def step(self) -> None:
        raise NotImplementedError

    def interval(self) -> float:
        """Seconds between steps while all is well."""
        raise NotImplementedError

    def health(self) -> dict[str, Any]:
        """What this run adds to the health that ``progress`` shows."""
        return {}

    def start(self) -> None:
        """Before the first step (inside the session)."""

    def finish(self) -> None:
        """After the last step, before the last heartbeat."""

    def after_error(self) -> None:
        """A step failed (logged already)."""

    def heartbeat(self, *, force: bool = False) -> None:
        self.indexer.show_health({**self.health(), **self.recovery.health()}, self.pending(), force=force)

    def pending(self) -> int:
        """Changes waiting, for progress."""
        return 0

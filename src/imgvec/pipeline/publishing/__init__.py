"""A run's progress sent where other machines read it: CloudWatch metrics, a state file on S3 (or a disk).

The run saves its progress every second (the journal, the progress display); publishers want it far less often
(CloudWatch each minute, the state file each 30 s) and may be slow or down. So a run only *offers* its latest
progress here, which costs a copy; a background thread publishes each publisher's at its own interval, and the
run's end is published at once, waited for a bounded time. A publisher that fails is a warning line (one per
outage, and one when it is back), never a failed run: the index matters more than its dashboard.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from imgvec.errors import reason
from imgvec.pipeline.report import Progress

log = logging.getLogger(__name__)

FINAL_WAIT_SECONDS = 30.0
"""How long the end of a run waits for its last publish (a CloudWatch that does not answer must not hang it)."""


class Publisher(Protocol):
    name: str
    """How warnings name it: ``CloudWatch namespace imgvec``, ``state file s3://…``."""
    every: float
    """Seconds between publishes while the run goes on."""

    def publish(self, progress: Progress, metrics: dict[str, Any]) -> None:
        """Send this snapshot; raise on failure (the caller warns)."""
        ...


@dataclass(slots=True)
class _Slot:
    publisher: Publisher
    last: float = 0.0
    failing: bool = False


class Publishing:
    def __init__(self, publishers: list[Publisher], warn: Callable[[str], None] | None = None) -> None:
        self._slots = [_Slot(publisher) for publisher in publishers]
        self._warn = warn or (lambda line: log.warning("%s", line))
        self._latest: tuple[Progress, dict[str, Any]] | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="imgvec-publish", daemon=True)
        self._thread.start()

    def offer(self, progress: Progress, metrics: dict[str, Any]) -> None:
        """The run's progress now; a finished or interrupted run's is published before this returns."""
        snapshot = (copy.deepcopy(progress), copy.deepcopy(metrics))
        with self._wake:
            self._latest = snapshot
        if progress.state != "running":
            self._publish_all(snapshot, final=True)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=FINAL_WAIT_SECONDS)

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait(timeout=1.0)
                if self._closed:
                    return
                latest = self._latest
            if latest is not None:
                self._publish_all(latest, final=False)

    def _publish_all(self, snapshot: tuple[Progress, dict[str, Any]], *, final: bool) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if not final and now - slot.last < slot.publisher.every:
                continue
            slot.last = now
            done = threading.Event()
            errors: list[BaseException] = []

            def send(slot: _Slot = slot, done: threading.Event = done, errors: list[BaseException] = errors) -> None:
                try:
                    slot.publisher.publish(*snapshot)
                except Exception as exc:  # noqa: BLE001 - a dashboard's outage is a warning, not the run's failure
                    errors.append(exc)
                finally:
                    done.set()

            if final:  # bounded: the run's end must not hang on a silent endpoint
                threading.Thread(target=send, name="imgvec-publish-final", daemon=True).start()
                if not done.wait(FINAL_WAIT_SECONDS):
                    errors.append(TimeoutError(f"no answer in {FINAL_WAIT_SECONDS:.0f}s"))
            else:
                send()
            self._report(slot, errors[0] if errors else None)

    def _report(self, slot: _Slot, error: BaseException | None) -> None:
        name = slot.publisher.name
        if error is not None and not slot.failing:
            self._warn(f"{name}: cannot publish ({reason(error)}); the run goes on, and will try again")
        elif error is None and slot.failing:
            self._warn(f"{name}: publishing again")
        slot.failing = error is not None

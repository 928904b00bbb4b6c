"""Dynamic batching: concurrent requests share one model call.

A CLIP image tower embeds a batch of 16 in far less than 16 times the time of one, so a service that calls the
model once per request wastes most of the CPU under load. Every request thread hands its input to one model
thread and waits; that thread takes whatever has queued, waits at most ``max_wait`` for more (never when a batch
is already full), runs the model once and hands each request its row. One model thread also means one set of
inference threads, as in the batched pipeline, rather than one per request fighting over the cores.

A lone request never waits: the thread first takes only what has already queued, and waits for more only when that
found company (requests are arriving together). Under load, requests queue while the model runs, so batches form
without any waiting at all.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from imgvec.embed.base import Embedder

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_SECONDS = 0.01
"""How long a batch that already has company waits for more: long enough for requests that arrived together to
join. A lone request does not wait."""


@dataclass(slots=True)
class _Job:
    kind: str
    """image or text: a batch holds one kind (the two towers are separate model calls)."""
    value: np.ndarray | str
    future: Future[np.ndarray] = field(default_factory=Future)


class ModelBatcher:
    """One model thread serving every request. ``on_batch(kind, size, seconds)``: a metrics hook."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self._on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None
        """A job of the other kind taken while a batch was filling: it starts the next batch."""
        self._thread = threading.Thread(target=self._serve, name="imgvec-model", daemon=True)
        self._thread.start()

    def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        """(3, H, W) model input → one L2-normalised vector; blocks the calling thread until its batch ran."""
        return self._submit(_Job("image", pixels))

    def embed_text(self, text: str) -> np.ndarray:
        return self._submit(_Job("text", text))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _submit(self, job: _Job) -> np.ndarray:
        if not self._thread.is_alive():
            raise RuntimeError("the model thread has stopped")
        self._queue.put(job)
        return job.future.result()

    def _serve(self) -> None:
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    if len(batch) == 1:  # alone so far: only what has already queued
                        job = self._queue.get_nowait()
                    else:
                        job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # close(): seen again once this batch is done
                    break
                if job.kind != first.kind:
                    self._held = job
                    break
                batch.append(job)
            self._run(first.kind, batch)

    def _run(self, kind: str, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            if kind == "image":
                vectors = self.embedder.embed_images(np.stack([job.value for job in batch]))
            else:
                vectors = self.embedder.embed_texts([str(job.value) for job in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the model's error, and the thread lives on
            for job in batch:
                job.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(kind, len(batch), time.perf_counter() - started)
        for job, vector in zip(batch, vectors, strict=True):
            job.future.set_result(vector)

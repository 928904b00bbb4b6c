"""Where images are read, decoded and (for a cluster) embedded: the one seam between the run and its compute.

The ``Indexer`` keeps what a run keeps (listing, skip rules, run state, failures, counts, the lock) and writes
through the one write path; an executor only turns items into outcomes. ``LocalExecutor`` decodes in this
machine's worker processes and leaves the model to the write path (which reuses vectors of identical bytes);
``RayExecutor`` (ray_executor.py) has actors on a cluster read, decode and embed, and hands back vectors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from imgvec.documents import Failure, SourceItem
from imgvec.embed.base import Embedder
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.pools import DecodePools, Pending
from imgvec.pipeline.workers import Prepared
from imgvec.sources.base import Source


@dataclass(slots=True)
class Embedded:
    """An item embedded elsewhere: its vector and the hash of the bytes it came from."""

    item: SourceItem
    vector: np.ndarray
    content_hash: str
    read_seconds: float
    decode_seconds: float
    embed_seconds: float
    """This item's share of its batch's model time."""
    warnings: tuple[str, ...] = ()


Outcome = Prepared | Embedded | Failure
"""What an executor yields per item: pixels for the local model, a vector, or the item's failure."""


@dataclass(slots=True)
class ExecutorStatus:
    """What progress shows of the executor. ``workers``: per worker (a Ray actor), its node, whether it is alive,
    images done and images/s; None for the local executor, whose decode workers hold no model."""

    executor: str
    runtime: str
    runtime_reason: str
    workers_alive: int
    workers: list[dict[str, Any]] | None = None
    bytes_per_image: float | None = None
    """Bytes sent and received between driver and workers per image (Ray)."""
    decode_workers: int | None = None
    """This machine's decode worker processes (local); None where the workers decode for themselves."""


class Executor(Protocol):
    def outcomes(self, items: Iterable[SourceItem]) -> Iterator[Outcome]:
        """One outcome per item, in any order; every item in hand is finished when ``items`` ends, so a stop
        ends the run after the work already sent."""
        ...

    def status(self) -> ExecutorStatus: ...

    def close(self) -> None: ...


ExecutorFactory = Callable[[Source, Embedder, PipelineOptions], Executor]
"""Builds a session's executor; ``runs`` chooses which (``--executor``), the run never knows."""


class LocalExecutor:
    """This machine: I/O threads read ahead, decode workers decode, a bounded look-ahead keeps both busy."""

    def __init__(self, source: Source, embedder: Embedder, options: PipelineOptions) -> None:
        self.embedder = embedder
        self.options = options
        self._pools = DecodePools(source, embedder.preprocessor, options)

    def outcomes(self, items: Iterable[SourceItem]) -> Iterator[Outcome]:
        in_flight: deque[tuple[SourceItem, Pending]] = deque()
        options = self.options
        look_ahead = max(2 * options.batch_size, 4 * max(1, options.workers), 2 * options.io_concurrency)
        for item in items:
            in_flight.append((item, self._pools.submit(item)))
            # Under a rate limit the items trickle in and the look-ahead may never fill: what is done goes on to the
            # writer at once, or nothing would be written until the listing ended. Otherwise the look-ahead stays
            # full, so the workers keep decoding while the model runs.
            trickle = options.rate_limit is not None
            while len(in_flight) >= look_ahead or (trickle and in_flight and in_flight[0][1].done()):
                yield from self._collect(in_flight)
        while in_flight:  # even when stopping: the signal says "finish the batch in hand"
            yield from self._collect(in_flight)

    def _collect(self, in_flight: deque[tuple[SourceItem, Pending]]) -> Iterable[Prepared | Failure]:
        """The oldest result. A worker that died broke the pool: every file in flight is run again alone."""
        item, future = in_flight.popleft()
        try:
            return [self._pools.result(item, future)]
        except BrokenProcessPool:
            suspects = [item, *(other for other, _ in in_flight)]
            in_flight.clear()
            return self._pools.one_by_one(suspects)

    def status(self) -> ExecutorStatus:
        runtime = self.embedder.runtime
        workers = self.options.workers
        return ExecutorStatus(
            "local", runtime.describe(), runtime.reason, workers_alive=workers, decode_workers=workers
        )

    def close(self) -> None:
        self._pools.close()

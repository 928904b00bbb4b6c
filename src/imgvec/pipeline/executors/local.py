"""``--executor local``: this machine's I/O threads and decode workers prepare pixels; the model runs in the
write path (which reuses vectors of identical bytes), so no vector is computed twice for the same bytes."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool

from imgvec.documents import Failure, SourceItem
from imgvec.embed.base import Embedder
from imgvec.pipeline.executors.base import ExecutorStatus, Outcome, Prepared
from imgvec.pipeline.executors.gpu_lane import GpuDecodeLane, gpu_lane_for
from imgvec.pipeline.executors.pools import DecodePools, Pending
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.base import Source


class LocalExecutor:
    """This machine: I/O threads read ahead, decode workers decode, a bounded look-ahead keeps both busy."""

    def __init__(
        self, source: Source, embedder: Embedder, options: PipelineOptions, *, lane: GpuDecodeLane | None = None
    ) -> None:
        """``lane``: a GPU decode lane beside the decode workers; None: the model's GPU's when it has one (and
        ``options.gpu_decode``), else none. Tests pass one on the CPU to run the lane's code on CPU tensors."""
        self.embedder = embedder
        self.options = options
        self._lane = lane or gpu_lane_for(embedder, options)
        try:
            self._pools = DecodePools(source, embedder.preprocessor, options, self._lane)
        except BaseException:
            if self._lane is not None:
                self._lane.close()
            raise

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
            "local",
            runtime.describe(),
            runtime.reason,
            workers_alive=workers,
            decode_workers=workers,
            decode_lanes=self._lane.describe() if self._lane is not None else None,
        )

    def close(self) -> None:
        self._pools.close()
        if self._lane is not None:
            self._lane.close()

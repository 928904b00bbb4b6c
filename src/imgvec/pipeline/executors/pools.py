"""The pools that feed the model: I/O threads that read ahead, and decode workers that hash, decode and preprocess.

A decode worker that dies (a decoder crash, the OOM killer) breaks its whole process pool. The pools are then
restarted together and the files that were in flight are run again one at a time, so that only the file that
kills a worker fails. A file that is still reading or decoding after ``file_timeout`` is failed the same way, its
worker killed. Workers that cannot start at all, or die again and again without a single file done, are a set-up
problem (no ``/dev/shm``, a process limit, a sandbox): the run stops with one line instead of blaming every file.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from imgvec.documents import Failure, SourceItem
from imgvec.embed.preprocess import Preprocessor
from imgvec.errors import DecodeWorkersError, reason
from imgvec.pipeline.executors.base import ForLane, Prepared
from imgvec.pipeline.executors.decode_worker import WorkerConfig, init_worker, prepare, read_item, worker_ready
from imgvec.pipeline.executors.gpu_lane import GpuDecodeLane
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.base import Source

Pending = Future[Prepared | Failure]
"""A file on its way: decoding, or (with I/O threads) being read, then decoding."""
WORKER_DIED = "the decode worker died on this file (a crash, or out of memory, or killed from outside)"
START_SECONDS = 120.0
"""How long the first decode worker may take to start (imports and all) before the pool is called broken."""
FRUITLESS_RESTARTS = 3
"""Restarts in a row, with no file decoded in between, after which the workers themselves are the problem."""
WORKERS_HELP = (
    "check that /dev/shm is mounted and writable and that the process limit (ulimit -u, a container's pids limit) "
    "allows more processes, or decode in threads with --workers 0"
)


class DecodePools:
    """Readers and decoders for one session; ``submit`` a file, get a future of its pixels or its failure."""

    def __init__(
        self, source: Source, preprocessor: Preprocessor, options: PipelineOptions, lane: GpuDecodeLane | None = None
    ) -> None:
        """``lane``: a GPU decode lane beside the workers (``gpu_lane.py``), which this takes the files it refuses
        from; its owner starts nothing and closes it."""
        self.source = source
        self.options = options
        self.lane = lane
        if lane is not None:
            lane.start(self._decode_refused)
        reduce_for = None if options.full_decode else preprocessor.reduce_for
        self._config = WorkerConfig(source, preprocessor, options.max_pixels, options.retry, reduce_for)
        self._fruitless_restarts = 0
        self._killed = False
        """A worker was killed (it hung): the pool must be restarted before it takes more work."""
        self._decoders = self._decoder_pool()
        self._readers = self._reader_pool()
        self._check_started()

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(cancel_futures=True)
        self._decoders.shutdown(cancel_futures=True)

    def submit(self, item: SourceItem) -> Pending:
        outcome = self._submit(item)
        outcome.add_done_callback(self._note_outcome)
        return outcome

    def result(self, item: SourceItem, pending: Pending, *, alone: bool = False) -> Prepared | Failure:
        """The file's pixels or failure, waiting at most ``file_timeout``. When that passes while it decodes, the
        workers are killed. The file waited for need not be the stuck one (it may queue behind it), so unless it
        ran ``alone`` this raises ``BrokenProcessPool``, as a crash does, and the caller runs the files in flight
        one by one: the stuck file then times out alone and is the one that fails."""
        try:
            return pending.result(timeout=self.options.file_timeout)
        except TimeoutError:
            if isinstance(pending, _ReadThenDecode) and pending.reading:  # a slow share or bucket: no worker is stuck
                pending.abandoned = True
                return Failure.of(item, "read", f"reading took over {self.options.file_timeout:g}s")
            if isinstance(pending, _ReadThenDecode) and pending.on_lane:  # the GPU lane is slow: no worker is stuck
                return Failure.of(item, "decode", f"decoding on the GPU took over {self.options.file_timeout:g}s")
            self._kill_workers()
            self._killed = True
            if not alone:
                raise BrokenProcessPool(f"a file took over {self.options.file_timeout:g}s") from None
            return Failure.of(
                item, "worker", f"reading and decoding took over {self.options.file_timeout:g}s: its worker was stopped"
            )

    def _note_outcome(self, done: Pending) -> None:
        if not done.cancelled() and done.exception() is None and isinstance(done.result(), Prepared):
            self._fruitless_restarts = 0

    def _submit(self, item: SourceItem) -> Pending:
        if self._killed:
            self.restart()
        to_lane = self.lane is not None and self.lane.split.take()
        if self._readers is None:
            if self.lane is None:
                return self._decoders.submit(prepare, item)
            outcome = _ReadThenDecode()
            outcome.reading = False
            self._decode(self._decoders, outcome, item, None, 0.0, to_lane)
            return outcome
        decoders = self._decoders  # the pool of this moment: a restarted pool never gets a stale file's work
        outcome = _ReadThenDecode()

        def read_then_decode() -> None:
            began = time.perf_counter()
            data = read_item(self.source, item, self.options.retry, self.options.max_pixels)
            if isinstance(data, Failure):
                outcome.set_result(data)
                return
            if outcome.abandoned:  # the read took too long and the file was failed meanwhile
                return
            outcome.reading = False
            self._decode(decoders, outcome, item, data, time.perf_counter() - began, to_lane)

        self._readers.submit(read_then_decode)
        return outcome

    def _decode(
        self,
        decoders: Executor,
        outcome: _ReadThenDecode,
        item: SourceItem,
        data: bytes | None,
        read_seconds: float,
        to_lane: bool = False,
    ) -> None:
        """A worker decodes the file into ``outcome``; with ``to_lane``, a file it finds fit for the GPU lane goes
        on there. Each file a worker decodes itself times the CPU lane for the split."""
        try:
            decoding = decoders.submit(prepare, item, data, read_seconds, to_lane)
        except (BrokenProcessPool, RuntimeError) as exc:  # the pool broke or shut down meanwhile
            outcome.set_exception(BrokenProcessPool(str(exc)))
            return
        decoding.add_done_callback(lambda done: self._decoded(done, outcome))

    def _decoded(self, done: Future[Prepared | ForLane | Failure], outcome: _ReadThenDecode) -> None:
        if self.lane is not None and not done.cancelled() and done.exception() is None:
            result = done.result()
            if isinstance(result, ForLane):
                outcome.on_lane = True
                self.lane.put(result, outcome)
                return
            if isinstance(result, Prepared):
                self.lane.split.cpu_decoded(result.decode_seconds)
                result.pixels = self.lane.upload(result.pixels)
        _chain(done, outcome)

    def _decode_refused(self, entry: ForLane, outcome: Future[Prepared | Failure]) -> None:
        """A file the GPU lane refused: a CPU worker decodes it (its header already read, its bytes in hand)."""
        assert isinstance(outcome, _ReadThenDecode)
        outcome.on_lane = False
        self._decode(self._decoders, outcome, entry.item, entry.data, entry.read_seconds)

    def one_by_one(self, suspects: Iterable[SourceItem]) -> Iterator[Prepared | Failure]:
        """After a worker died: restart, then run each file that was in flight alone; the one that kills its
        worker again is that file's failure."""
        self.restart()
        for suspect in suspects:
            try:
                outcome = self.result(suspect, self.submit(suspect), alone=True)
            except BrokenProcessPool:
                outcome = Failure.of(suspect, "worker", WORKER_DIED)
                self._killed = True
            if self._killed:
                self.restart()
            yield outcome

    def restart(self) -> None:
        """New readers and decoders. A reader still busy (a stalled share) is left to finish on its own: what it
        hands to the old pool is refused there, never decoded twice. Raises ``DecodeWorkersError`` when restarts
        keep coming with no file decoded in between."""
        self._fruitless_restarts += 1
        if self._fruitless_restarts > FRUITLESS_RESTARTS and self.options.workers > 0:
            raise DecodeWorkersError(
                f"decode workers died {self._fruitless_restarts} times in a row without decoding a file: {WORKERS_HELP}"
            )
        if self._readers is not None:
            self._readers.shutdown(wait=False, cancel_futures=True)
        self._kill_workers()
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self._decoders = self._decoder_pool()
        self._readers = self._reader_pool()
        self._killed = False
        self._check_started()

    def _check_started(self) -> None:
        """Start one decode worker now and wait for it: a pool that cannot start fails here, with one line."""
        if self.options.workers == 0:
            return
        try:
            self._decoders.submit(worker_ready).result(timeout=START_SECONDS)
        except (BrokenProcessPool, OSError, TimeoutError) as exc:
            self._kill_workers()
            raise DecodeWorkersError(f"decode workers cannot start ({_start_failure(exc)}): {WORKERS_HELP}") from None

    def _kill_workers(self) -> None:
        """Kill the decode processes (one is stuck, or the pool is being replaced); the pool is broken after."""
        processes = getattr(self._decoders, "_processes", None) or {}
        for process in list(processes.values()):
            process.kill()

    def _reader_pool(self) -> ThreadPoolExecutor | None:
        if self.options.io_concurrency <= 0:
            return None
        return ThreadPoolExecutor(max_workers=self.options.io_concurrency, thread_name_prefix="imgvec-read")

    def _decoder_pool(self) -> Executor:
        if self.options.workers == 0:
            init_worker(self._config)
            return ThreadPoolExecutor(max_workers=2, thread_name_prefix="imgvec-decode")
        # spawn, not fork: this process has torch's thread pools running, which fork does not survive safely
        try:
            return ProcessPoolExecutor(
                max_workers=self.options.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=partial(init_worker, parent_pid=os.getpid()),
                initargs=(self._config,),
            )
        except OSError as exc:  # the pool's semaphores live in /dev/shm
            raise DecodeWorkersError(f"decode workers cannot start ({_start_failure(exc)}): {WORKERS_HELP}") from None


class _ReadThenDecode(Future[Prepared | Failure]):
    """A file an I/O thread reads before a worker decodes it: which of the two is slow decides what a timeout means."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.abandoned = False
        self.on_lane = False
        """With the GPU decode lane now: a time-out there is the lane's, no worker is stuck."""


def _start_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"none started within {START_SECONDS:g}s"
    return reason(exc)


def _chain(done: Pending, outcome: Pending) -> None:
    if done.cancelled():  # the pools are shutting down; nobody waits for this file any more
        outcome.cancel()
        return
    error = done.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())

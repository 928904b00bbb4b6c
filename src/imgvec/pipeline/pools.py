"""The pools that feed the model: I/O threads that read ahead, and decode workers that hash, decode and preprocess.

A decode worker that dies (a decoder crash, the OOM killer) breaks its whole process pool. The pools are then
restarted together and the files that were in flight are run again one at a time, so that only the file that
kills a worker fails.
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
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.workers import Prepared, WorkerConfig, init_worker, prepare, read_item
from imgvec.sources.base import Source

Pending = Future[Prepared | Failure]
"""A file on its way: decoding, or (with I/O threads) being read, then decoding."""
WORKER_DIED = "the decode worker died on this file (a crash, or out of memory)"


class DecodePools:
    """Readers and decoders for one session; ``submit`` a file, get a future of its pixels or its failure."""

    def __init__(self, source: Source, preprocessor: Preprocessor, options: PipelineOptions) -> None:
        self.source = source
        self.options = options
        reduce_for = None if options.full_decode else preprocessor.reduce_for
        self._config = WorkerConfig(source, preprocessor, options.max_pixels, options.retry, reduce_for)
        self._decoders = self._decoder_pool()
        self._readers = self._reader_pool()

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(cancel_futures=True)
        self._decoders.shutdown(cancel_futures=True)

    def submit(self, item: SourceItem) -> Pending:
        if self._readers is None:
            return self._decoders.submit(prepare, item)
        decoders = self._decoders  # the pool of this moment: a restarted pool never gets a stale file's work
        outcome: Pending = Future()

        def read_then_decode() -> None:
            began = time.perf_counter()
            data = read_item(self.source, item, self.options.retry)
            if isinstance(data, Failure):
                outcome.set_result(data)
                return
            try:
                decoding = decoders.submit(prepare, item, data, time.perf_counter() - began)
            except (BrokenProcessPool, RuntimeError) as exc:  # the pool broke or shut down meanwhile
                outcome.set_exception(BrokenProcessPool(str(exc)))
                return
            decoding.add_done_callback(lambda done: _chain(done, outcome))

        self._readers.submit(read_then_decode)
        return outcome

    def one_by_one(self, suspects: Iterable[SourceItem]) -> Iterator[Prepared | Failure]:
        """After a worker died: restart, then run each file that was in flight alone; the one that kills its
        worker again is that file's failure."""
        self.restart()
        for suspect in suspects:
            try:
                yield self.submit(suspect).result()
            except BrokenProcessPool:
                self.restart()
                yield Failure.of(suspect, "decode", WORKER_DIED)

    def restart(self) -> None:
        """Readers first (waiting for them: none may still hand work to the old pool), then the decoders."""
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
        self._decoders.shutdown(cancel_futures=True)
        self._decoders = self._decoder_pool()
        self._readers = self._reader_pool()

    def _reader_pool(self) -> ThreadPoolExecutor | None:
        if self.options.io_concurrency <= 0:
            return None
        return ThreadPoolExecutor(max_workers=self.options.io_concurrency, thread_name_prefix="imgvec-read")

    def _decoder_pool(self) -> Executor:
        if self.options.workers == 0:
            init_worker(self._config)
            return ThreadPoolExecutor(max_workers=2, thread_name_prefix="imgvec-decode")
        # spawn, not fork: this process has torch's thread pools running, which fork does not survive safely
        return ProcessPoolExecutor(
            max_workers=self.options.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=partial(init_worker, parent_pid=os.getpid()),
            initargs=(self._config,),
        )


def _chain(done: Pending, outcome: Pending) -> None:
    if done.cancelled():  # the pools are shutting down; nobody waits for this file any more
        outcome.cancel()
        return
    error = done.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())

"""What one Ray actor does: load the model once, then read, decode and embed the batches of items it is sent.

Items arrive as locations (a NAS path, an S3 key, an index document's URL), never as bytes: each actor reads
from the source itself, so the driver's network and memory carry only item records out and vectors back. The
reading and decoding are the local pipeline's own (``decode_worker.read_item`` and ``prepare``), in threads of
the actor, and on a GPU actor (``--ray-gpus-per-worker``) its GPU decodes JPEGs beside those threads, as on one
machine (``gpu_lane.py``); the model runs one batch at a time while the next batch decodes (the actor takes two
calls at once).
Everything that goes wrong with one file comes back as that file's ``Failure``, so a call raises only for a bug.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imgvec.documents import Failure, SourceItem
from imgvec.embed.loading import ModelConfig, load_embedder
from imgvec.embed.pixels import stack
from imgvec.errors import reason
from imgvec.pipeline.executors.base import Embedded, ForLane, Prepared
from imgvec.pipeline.executors.decode_worker import WorkerConfig, init_worker, prepare, read_item
from imgvec.pipeline.executors.gpu_lane import gpu_lane_for
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.base import Source


class EmbedWorker:
    """A Ray actor (``ray.remote(EmbedWorker)``, see executor.py); plain Python, so it is tested as one."""

    def __init__(self, model: ModelConfig, source: Source, options: PipelineOptions) -> None:
        """``model``: what to load and how to run it (its threads and device set by the driver for this actor's
        share of its node); no store address or credential reaches an actor."""
        self.embedder = load_embedder(model)
        self.runtime = self.embedder.runtime  # settled now: a first run on this CPU measures its runtimes here
        reduce_for = None if options.full_decode else self.embedder.preprocessor.reduce_for
        init_worker(WorkerConfig(source, self.embedder.preprocessor, options.max_pixels, options.retry, reduce_for))
        self.source = source
        self.options = options
        # Reads wait on the network; decodes need a core each: both pools are the actor's own threads.
        self._readers = ThreadPoolExecutor(max(2, options.io_concurrency), thread_name_prefix="imgvec-read")
        decode_threads = (model.threads or 1) + 1
        self._decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="imgvec-decode")
        self._model = threading.Lock()
        self.lane = gpu_lane_for(self.embedder, options, threads=decode_threads)
        """On a GPU actor, its GPU's decoder beside the threads; None on a CPU actor."""

    def ready(self) -> dict[str, Any]:
        """Who this worker is, what it loaded and how it embeds: the driver checks the model before any work."""
        import ray

        import imgvec

        context = ray.get_runtime_context()
        return {
            "node": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id()[:12],
            "pid": os.getpid(),
            "version": imgvec.__version__,
            "identity": self.embedder.identity,
            "runtime": self.runtime.describe(),
            "runtime_reason": self.runtime.reason,
        }

    def embed(self, items: list[SourceItem]) -> list[Embedded | Failure]:
        """Each item's vector or its failure."""
        results = list(self._readers.map(self._read_and_decode, items))
        for_lane = [result for result in results if isinstance(result, ForLane)]
        if for_lane:
            assert self.lane is not None
            results = [result for result in results if not isinstance(result, ForLane)]
            decoded = self.lane.decode(for_lane)
            results += [result for result in decoded if isinstance(result, Prepared)]
            refused = [result for result in decoded if isinstance(result, ForLane)]
            results += list(
                self._decoders.map(lambda entry: prepare(entry.item, entry.data, entry.read_seconds), refused)
            )
        failures: list[Embedded | Failure] = [result for result in results if isinstance(result, Failure)]
        prepared = [result for result in results if isinstance(result, Prepared)]
        if not prepared:
            return failures
        began = time.perf_counter()
        try:
            with self._model:
                vectors = self.embedder.embed_images(stack([entry.pixels for entry in prepared]))
        except Exception as exc:  # noqa: BLE001 - the model refused this batch: each image is recorded with why
            return [*failures, *(Failure.of(entry.item, "embed", f"model failed: {reason(exc)}") for entry in prepared)]
        share = (time.perf_counter() - began) / len(prepared)
        embedded = [
            Embedded(
                entry.item,
                vector,
                entry.content_hash,
                entry.picture,
                entry.read_seconds,
                entry.decode_seconds,
                share,
                entry.warnings,
            )
            for entry, vector in zip(prepared, vectors, strict=True)
        ]
        return [*failures, *embedded]

    def _read_and_decode(self, item: SourceItem) -> Prepared | ForLane | Failure:
        began = time.perf_counter()
        data = read_item(self.source, item, self.options.retry, self.options.max_pixels)
        if isinstance(data, Failure):
            return data
        to_lane = self.lane is not None and self.lane.split.take()
        result = self._decoders.submit(prepare, item, data, time.perf_counter() - began, to_lane).result()
        if self.lane is not None and isinstance(result, Prepared):
            self.lane.split.cpu_decoded(result.decode_seconds)
        return result

"""A second decoder beside the CPU workers when the model runs on a CUDA GPU: the GPU's own JPEG decoder.

On a GPU the model is rarely the limit; decoding photos is, and a GPU machine has two decoders: its CPU cores
(the workers' reduced DCT decode) and nvJPEG on the GPU. Both run at once. ``LaneSplit`` sends each file to one
of them in proportion to their measured rates, re-measured all run long, so a lane that slows (a busy CPU, larger
files) gets less. A file sent to the GPU lane still goes through a CPU worker first, which reads it, hashes it
and checks its header (``gpu_decode.refusal``): only plain 8-bit JPEGs reach the lane, with their EXIF
orientation; anything else is decoded by that worker at once. A file nvJPEG refuses goes back to a CPU worker, so
the lane never fails a file of its own.

The lane's pixels stay on the device, uint8, and the model normalises them there (``ClipEmbedder._on_device``); a
CPU worker's are copied there as soon as its file is done (``upload``).
The same code runs on CPU tensors, which is how CI tests it (``tests/test_gpu_lane.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from imgvec.embed.base import Embedder, runs_on_gpu
from imgvec.embed.gpu_decode import decode_batch
from imgvec.embed.perceptual import phash_of_grey
from imgvec.embed.pixels import Pixels
from imgvec.embed.preprocess import Preprocessor
from imgvec.pipeline.executors.base import ForLane, Prepared
from imgvec.pipeline.options import PipelineOptions

log = logging.getLogger(__name__)

LANE_BATCH = 64
"""Files per batched decode call, at most: enough to keep nvJPEG's hardware engines busy."""
LANE_BATCH_PIXELS = 1_000_000_000
"""Decoded pixels per batch, at most (3 GB of RGB held on the device at once)."""
SHARE_BOUNDS = (0.05, 0.95)
"""Each lane keeps at least this share of the files, so that its rate is still measured when the other is faster."""
SMOOTHING = 0.2
"""Weight of a new measurement in a lane's running rate."""
REFUSED_BEFORE_GIVING_UP = 32
"""Files the lane may refuse before it has decoded one; then it is switched off for the run (a torchvision built
without nvJPEG, a device that cannot decode): otherwise every file it was offered would be read twice."""


class LaneSplit:
    """Which decoder takes the next file: the GPU lane's share is its rate over both lanes' rates. Until both have
    been measured, half and half."""

    def __init__(self, cpu_workers: int) -> None:
        self.cpu_workers = max(1, cpu_workers)
        self._cpu_seconds: float | None = None
        """Running seconds of one CPU worker per file it decoded."""
        self._gpu_seconds: float | None = None
        """Running seconds of the lane per file it decoded."""
        self._credit = 0.0
        self._lock = threading.Lock()
        self.to_gpu = 0
        self.to_cpu = 0
        self.gpu_off: str | None = None
        """Why the GPU lane takes no more files (``switch_off``); None while it does."""

    @property
    def share(self) -> float:
        """The GPU lane's share of the files."""
        if self.gpu_off is not None:
            return 0.0
        cpu, gpu = self.cpu_rate, self.gpu_rate
        if cpu is None or gpu is None:
            return 0.5
        low, high = SHARE_BOUNDS
        return min(high, max(low, gpu / (gpu + cpu)))

    @property
    def cpu_rate(self) -> float | None:
        """Files per second all CPU workers decode together."""
        return self.cpu_workers / self._cpu_seconds if self._cpu_seconds else None

    @property
    def gpu_rate(self) -> float | None:
        return 1.0 / self._gpu_seconds if self._gpu_seconds else None

    def take(self) -> bool:
        """True: offer the next file to the GPU lane."""
        with self._lock:
            self._credit += self.share
            if self._credit >= 1.0:
                self._credit -= 1.0
                self.to_gpu += 1
                return True
            self.to_cpu += 1
            return False

    def cpu_decoded(self, seconds: float) -> None:
        with self._lock:
            self._cpu_seconds = _smoothed(self._cpu_seconds, seconds)

    def gpu_decoded(self, files: int, seconds: float) -> None:
        if files:
            with self._lock:
                self._gpu_seconds = _smoothed(self._gpu_seconds, seconds / files)

    def switch_off(self, why: str) -> None:
        self.gpu_off = why

    def describe(self) -> dict[str, float | int | str | None]:
        return {
            "gpu_off": self.gpu_off,
            "gpu_share": round(self.share, 3),
            "gpu_files": self.to_gpu,
            "cpu_files": self.to_cpu,
            "gpu_rate": _rounded(self.gpu_rate),
            "cpu_rate": _rounded(self.cpu_rate),
        }


class GpuDecodeLane:
    """Decodes batches of ``ForLane`` files on ``device``. ``decode`` is synchronous (a Ray actor calls it within
    its batch); ``start`` runs it on a thread of its own, fed by ``put`` (the local executor)."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        device: str,
        split: LaneSplit,
        *,
        max_batch: int = LANE_BATCH,
        max_batch_pixels: int = LANE_BATCH_PIXELS,
    ) -> None:
        self.preprocessor = preprocessor
        self.device = device
        self.split = split
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.decoded = 0
        self.refused = 0
        self._copies: Any = None
        """The stream that uploads CPU workers' pixels (``upload``), made on first use."""
        self._queue: queue.Queue[tuple[ForLane, Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._fallback: Callable[[ForLane, Future], None] | None = None

    def decode(self, files: list[ForLane]) -> list[Prepared | ForLane]:
        """Each file's model input, or the file itself where nvJPEG refused it (for a CPU worker to decode)."""
        began = time.perf_counter()
        results = decode_batch(
            [entry.data for entry in files],
            [entry.header.orientation for entry in files],
            self.preprocessor,
            self.device,
        )
        seconds = time.perf_counter() - began
        share = seconds / max(1, len(files))
        out: list[Prepared | ForLane] = []
        refusals: list[str] = []
        for entry, result in zip(files, results, strict=True):
            if isinstance(result, Exception):
                log.debug("GPU decode refused %s (%s); a CPU worker decodes it", entry.item.uri, result)
                refusals.append(str(result).splitlines()[0][:200] if str(result) else type(result).__name__)
                self.refused += 1
                out.append(entry)
                continue
            self.decoded += 1
            out.append(
                Prepared(
                    item=entry.item,
                    pixels=result.pixels,
                    content_hash=entry.content_hash,
                    picture=entry.header.with_hash(phash_of_grey(result.grey)),
                    read_seconds=entry.read_seconds,
                    decode_seconds=entry.decode_seconds + share,
                    warnings=entry.warnings,
                )
            )
        self.split.gpu_decoded(sum(isinstance(result, Prepared) for result in out), seconds)
        if refusals:
            self._give_up_if_useless(refusals[0])
        return out

    def _give_up_if_useless(self, example: str) -> None:
        if self.decoded == 0 and self.refused >= REFUSED_BEFORE_GIVING_UP and self.split.gpu_off is None:
            why = f"it refused the first {self.refused} files ({example})"
            log.warning("the GPU decode lane is off: %s; the CPU decode workers decode every file", why)
            self.split.switch_off(why)

    def upload(self, pixels: Pixels) -> Pixels:
        """A CPU worker's pixels copied to the lane's device as soon as the file is done, from pinned memory on a
        stream of their own: the copy overlaps what the device runs meanwhile (the previous batch's model call),
        and the batch the model takes is already on the device. On a CPU device, or when the copy fails (out of
        device memory), they stay as they are and the model's process copies them (``ClipEmbedder._on_device``)."""
        if not self.device.startswith("cuda") or not isinstance(pixels, np.ndarray):
            return pixels
        import torch

        try:
            if self._copies is None:
                self._copies = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._copies):
                tensor = torch.from_numpy(pixels).pin_memory().to(self.device, non_blocking=True)
            self._copies.synchronize()  # ready for any stream once this returns (a worker's callback thread waits)
            return tensor
        except RuntimeError as exc:
            log.debug("pixels stay on the host: %s", exc)
            return pixels

    def start(self, fallback: Callable[[ForLane, Future], None]) -> None:
        """Decode what ``put`` hands over on a thread of this process; ``fallback`` takes a refused file and the
        future its outcome goes to."""
        self._fallback = fallback
        self._thread = threading.Thread(target=self._serve, name="imgvec-gpu-decode", daemon=True)
        self._thread.start()

    def put(self, entry: ForLane, outcome: Future) -> None:
        self._queue.put((entry, outcome))

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def describe(self) -> dict[str, float | int | str | None]:
        return {**self.split.describe(), "gpu_decoded": self.decoded, "gpu_refused": self.refused}

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, pixels, stop = [first], first[0].header.width * first[0].header.height, False
            while len(batch) < self.max_batch and pixels < self.max_batch_pixels:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                pixels += more[0].header.width * more[0].header.height
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[ForLane, Future]]) -> None:
        try:
            results = self.decode([entry for entry, _ in batch])
        except Exception as exc:  # noqa: BLE001 - the lane itself broke (device lost): the CPU decodes all of them
            log.warning("the GPU decode lane failed (%s); its files go to the CPU decode workers", exc)
            results = [entry for entry, _ in batch]
            self.refused += len(batch)
            self._give_up_if_useless(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        for (entry, outcome), result in zip(batch, results, strict=True):
            if isinstance(result, Prepared):
                if not outcome.done():
                    outcome.set_result(result)
            elif self._fallback is not None:
                self._fallback(entry, outcome)


def gpu_lane_for(embedder: Embedder, options: PipelineOptions, threads: int | None = None) -> GpuDecodeLane | None:
    """The lane a run on ``embedder`` gets: on the model's CUDA device, unless ``--no-gpu-decode``, the model's
    preprocessing is one the lane does not reproduce, or this torchvision cannot decode at all. ``threads``: the
    CPU decoders beside it (default: the run's decode workers)."""
    if not (options.gpu_decode and runs_on_gpu(embedder)) or not embedder.preprocessor.fast_path:
        return None
    runtime = embedder.runtime
    missing = _decode_missing()
    if missing:
        log.warning("no GPU decode lane: %s; the CPU decode workers decode every file", missing)
        return None
    split = LaneSplit(options.workers if threads is None else threads)
    return GpuDecodeLane(embedder.preprocessor, runtime.device, split)


def _decode_missing() -> str | None:
    try:
        import torchvision.io  # noqa: F401
    except ImportError as exc:
        return f"torchvision cannot be imported ({exc})"
    return None


def _smoothed(running: float | None, value: float) -> float:
    return value if running is None else (1 - SMOOTHING) * running + SMOOTHING * value


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)

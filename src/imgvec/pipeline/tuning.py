"""How many decode workers, inference threads and images per batch suit this machine, when the user leaves them out.

The model gets every core for its threads; the decode workers take their share when they need it. How many
workers that share needs follows the measured costs (``split_workers``): with torch fp32 on a CPU the model costs
more per image than the reduced decode of a camera JPEG, and one worker per spare core keeps it fed; with OpenVINO
bf16 the model is several times faster and decode becomes the limit, so more workers run (benchmarks/throughput.py;
figures in docs/performance.md). ONNX Runtime's and OpenVINO's pools do not spin, so idle model threads give their
core back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgvec.embed.cpu import usable_cores as cores
from imgvec.embed.runtime import RuntimeChoice

WORKER_MEMORY = 384 << 20
"""What one decode worker may need at its peak: its interpreter and Pillow, plus a full-size decode of a large
non-JPEG image (a 50 MP PNG is 150 MB as RGB) and the copies its conversion makes."""


MAX_WORKERS_PER_CORE = 4
"""Decode workers per core at most: enough to hide a slow share's latency behind the others' work."""


@dataclass(frozen=True, slots=True)
class Tuning:
    workers: int
    threads: int
    batch_size: int


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def default_workers(available: int | None = None, count: int | None = None) -> int:
    """One decode worker per core beyond the first (inference needs one), fewer where memory is short."""
    count = cores() if count is None else count
    return _within_memory(max(1, count - 1), available)


def _within_memory(workers: int, available: int | None) -> int:
    """A default never plans on more than half the available memory for its workers (``--workers`` may ask for
    up to all of it, ``max_workers``)."""
    available = available_memory() if available is None else available
    return workers if available is None else max(1, min(workers, available // (2 * WORKER_MEMORY)))


def max_workers(count: int | None = None, available: int | None = None) -> int:
    """The most decode workers ``--workers`` may ask for: more than a few per core only queue for the cores, and
    each costs memory (``--workers 100000`` once started a process per file in flight)."""
    count = cores() if count is None else count
    available = available_memory() if available is None else available
    by_memory = max(1, available // WORKER_MEMORY) if available is not None else MAX_WORKERS_PER_CORE * count
    return max(1, min(MAX_WORKERS_PER_CORE * count, by_memory))


def tune(
    choice: RuntimeChoice,
    *,
    workers: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
) -> Tuning:
    """Fill in what the user left out. Inference threads: on a GPU one thread feeds it; on a CPU every core."""
    workers = default_workers() if workers is None else min(workers, max_workers())
    if threads is None:
        threads = 1 if choice.on_gpu else cores()
    return Tuning(workers=workers, threads=threads, batch_size=batch_size or choice.batch_size)


def split_workers(
    decode_seconds: float, model_seconds: float, count: int | None = None, available: int | None = None
) -> int:
    """Decode workers for the cores decode needs beside the model, measured: ``decode_seconds`` of one core per
    image, ``model_seconds`` of all cores together per image. One more than decode's share of the cores, so a
    worker waiting on a read or a hand-off never leaves that share idle; capped like ``--workers``."""
    count = cores() if count is None else count
    share = decode_seconds / (decode_seconds + model_seconds) if decode_seconds + model_seconds > 0 else 1.0
    return min(_within_memory(math.ceil(count * share) + 1, available), max_workers(count, available))

"""How many decode workers, inference threads and images per batch suit this machine, when the user leaves them out.

On a CPU a real CLIP model costs more per image than the reduced decode of a camera JPEG, so the model is the
bottleneck: it gets every core and the decode workers take their share when they need it (measured by
benchmarks/throughput.py; figures in docs/performance.md). A model as small as the tests' tiny one is decode-bound
instead; no real CLIP model is that small. ONNX Runtime's pool is told not to spin, so idle model threads give
their core back.
"""

from __future__ import annotations

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
    workers = max(1, count - 1)
    available = available_memory() if available is None else available
    if available is not None:
        workers = min(workers, max(1, available // (2 * WORKER_MEMORY)))
    return workers


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

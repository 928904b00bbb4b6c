"""How many decode workers, inference threads and images per batch suit this machine, when the user leaves them out.

Measured on 2 cores with ViT-B/32 (benchmarks/throughput.py, docs/performance.md): a reduced decode of a 12 MP
JPEG costs ~60 ms of one core, the model ~150 ms of core time per image in fp32. The model is the bottleneck, so
it gets every core and the decode workers take their share when they need it: 2 inference threads beside 1 worker
ran 12 MP photos 1.2-1.4x faster than 1 thread. (A model as small as the tests' tiny one is decode-bound and runs
~12 % slower that way; no real CLIP model is that small.) ONNX Runtime's pool is told not to spin, so idle model
threads give their core back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgvec.embed.runtime import RuntimeChoice

WORKER_MEMORY = 384 << 20
"""What one decode worker may need at its peak: its interpreter and Pillow, plus a full-size decode of a large
non-JPEG image (a 50 MP PNG is 150 MB as RGB) and the copies its conversion makes."""


@dataclass(frozen=True, slots=True)
class Tuning:
    workers: int
    threads: int
    batch_size: int


def cores() -> int:
    """The cores this process may use (a container's CPU set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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


def tune(
    choice: RuntimeChoice,
    *,
    workers: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
) -> Tuning:
    """Fill in what the user left out. Inference threads: on a GPU one thread feeds it; on a CPU every core."""
    workers = default_workers() if workers is None else workers
    if threads is None:
        threads = 1 if choice.on_gpu else cores()
    return Tuning(workers=workers, threads=threads, batch_size=batch_size or choice.batch_size)

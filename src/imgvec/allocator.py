"""Keep a long run's heap from growing with the number of files it has seen.

LanceDB's Rust runtime allocates from many threads, and glibc gives each thread group its own heap arena; an
ingest commits thousands of small versions, and the freed pages stay scattered over those arenas instead of going
back to the system. Two arenas and large blocks mapped directly keep it flat (figures in docs/architecture.md,
"Memory and long runs"). The same settings as MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072, applied at run
time because the environment is read only when the process starts.

PyArrow brings its own allocator, mimalloc, which reserves a large region at the first Arrow allocation and keeps
pages resident there long after Arrow's own pool has freed them, stepping up each time the vector index is built
or merged. Arrow goes on the system allocator instead. ARROW_DEFAULT_MEMORY_POOL is read when Arrow first
allocates, so it is set here, before anything imports pyarrow; a user's own setting wins.

The price is paid by reads: with large blocks mapped and unmapped on every allocation, a k-NN search of the
embedded store runs several times slower. Commands that only query (`search`, `serve`) therefore skip this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
DIRECT_MAP_BYTES = 128 * 1024
"""Blocks this large (a decoded 224 px image is 600 KB) are mapped and unmapped on their own, never fragmenting."""


def limit_heap_growth() -> bool:
    """Tune glibc malloc and put Arrow on it; call before the store's threads start and before pyarrow is
    imported. Returns False where there is no glibc."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    done = all(
        mallopt(option, value) == 1
        for option, value in (
            (M_ARENA_MAX, ARENAS),
            (M_MMAP_THRESHOLD, DIRECT_MAP_BYTES),
            (M_TRIM_THRESHOLD, DIRECT_MAP_BYTES),
        )
    )
    if not done:
        log.debug("mallopt refused a setting; running with the allocator's defaults")
        return False
    arrow_on_system_allocator()
    return True


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system, in every arena (glibc's ``malloc_trim(0)``): `serve` calls it
    after decoding a huge picture. glibc raises its mmap threshold to the largest block freed, so after the first
    huge picture every request thread's arena kept a decoded picture's worth of free pages. Fixing the threshold
    low instead would slow every k-NN search of the embedded store (figures in docs/serving.md). False where there
    is no glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mallopt() -> Any:
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # musl and other libcs: their own allocators, nothing to tune
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def arrow_on_system_allocator() -> None:
    """Arrow allocates through glibc (tuned above) rather than its bundled mimalloc."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if "pyarrow" in sys.modules and os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system":
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())  # already imported: at least Python-side allocations

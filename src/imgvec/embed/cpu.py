"""What this CPU can do for a model: read from the kernel's flags, never from the model name, since the same
code runs on AVX2-only EPYCs and on Xeons with AMX, where the fastest runtime differs by several times."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""Native bf16 matrix products: AMX tiles (Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, Zen 4)."""
VNNI_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
"""int8 dot products that accumulate in 32 bits; without them int8 kernels add pairs in 16 bits and saturate."""


@dataclass(frozen=True, slots=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int

    @property
    def bf16(self) -> bool:
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def vnni(self) -> bool:
        return any(flag in self.flags for flag in VNNI_FLAGS)

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    def notable_flags(self) -> list[str]:
        """The flags that decide the runtime, in a stable order (printed by the benchmark and the probe)."""
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
        return [flag for flag in wanted if flag in self.flags]

    def signature(self) -> str:
        """What a measured choice depends on: another CPU, other flags or another core count measures again."""
        return f"{self.model}|{','.join(self.notable_flags())}|{self.cores} cores"

    def describe(self) -> str:
        return f"{self.model}, {self.cores} cores, {' '.join(self.notable_flags()) or 'no AVX2'}"


@functools.cache
def cpu_info() -> CpuInfo:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = frozenset(value.split())
                    break  # every core lists the same flags
    except OSError:  # pragma: no cover - not Linux: no flags, so the probe decides among the portable runtimes
        pass
    return CpuInfo(model=model, flags=flags, cores=usable_cores())


def usable_cores() -> int:
    """The cores this process may use (a container's CPU set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1

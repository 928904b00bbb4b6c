"""``--runtime auto`` on a CUDA GPU: measure torch's precisions and ``torch.compile`` on the model itself, at a few
batch sizes, once per GPU model, and keep the fastest whose vectors agree with fp32.

As on a CPU (``probe.py``), the name of the chip does not say it: bf16 and fp16 autocast run at the same tensor-core
rate on a Hopper GPU but not on older ones, ``torch.compile`` pays on some models and library versions and not on
others, and the batch at which a GPU saturates depends on both. The eager precisions are timed first; the fastest
of them is then timed compiled (compiling takes a minute, so only the one that may win). Agreement is the CPU
probe's rule: a minimum cosine to fp32 of ``MIN_COSINE`` on photo-like inputs, or never chosen. The result is cached
per GPU model, model and library versions in the same file as the CPU's (``runtime-probe.json``); the same code
runs on a CPU device, which is how CI tests it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgvec.embed.preprocess import Preprocessor
from imgvec.embed.probe import (
    MIN_COSINE,
    PROBE_FILE,
    images_per_second,
    load_entry,
    probe_pixels,
    versions,
    write_cache,
)
from imgvec.embed.runtime import Precision, Runtime, RuntimeChoice

log = logging.getLogger(__name__)

BATCH_SIZES = (256, 512, 1024)
"""Timed per candidate; the run then uses the fastest one's batch (unless told one)."""
TIMED_SECONDS = 0.4
"""Per candidate and batch size, after a warm-up call."""
DISTINCT_INPUTS = 64
"""Photo-like inputs made for the agreement check; larger batches repeat them (the timing does not depend on it)."""
REFERENCE = (Runtime.TORCH, Precision.FP32)

ImageEncoder = Callable[[np.ndarray], np.ndarray]
Builder = Callable[[Runtime, Precision], ImageEncoder]


@dataclass(frozen=True, slots=True)
class GpuMeasurement:
    runtime: Runtime
    precision: Precision
    rates: dict[int, float] | None = None
    """Images per second at each batch size timed."""
    min_cosine: float | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime.value} {self.precision.value}"

    @property
    def best_batch(self) -> tuple[int, float]:
        batch = max(self.rates or {0: 0.0}, key=lambda size: (self.rates or {}).get(size, 0.0))
        return batch, (self.rates or {}).get(batch, 0.0)

    def agrees(self) -> bool:
        return self.error is None and bool(self.rates) and (self.min_cosine or 0.0) >= MIN_COSINE


@dataclass(frozen=True, slots=True)
class GpuProbe:
    key: str
    device: str
    measured_at: str
    measurements: tuple[GpuMeasurement, ...]

    def best(self) -> GpuMeasurement:
        agreeing = [m for m in self.measurements if m.agrees()]
        if not agreeing:
            raise RuntimeError("no runtime could run the model on this GPU")
        return max(agreeing, key=lambda m: m.best_batch[1])

    def reason(self) -> str:
        best = self.best()
        batch, rate = best.best_batch
        reference = next((m for m in self.measurements if (m.runtime, m.precision) == REFERENCE), None)
        speed = ""
        if reference is not None and reference.rates and best is not reference:
            speed = f"{rate / reference.best_batch[1]:.1f}x fp32, "
        others = []
        for m in self.measurements:
            if m is best:
                continue
            if m.error:
                others.append(f"{m.label} cannot run ({m.error})")
            elif not m.agrees():
                others.append(f"{m.label} disagrees (min cosine {m.min_cosine:.5f})")
            else:
                others.append(f"{m.label} {m.best_batch[1]:.0f}/s")
        return (
            f"fastest measured on {self.device}: {best.label} at batch {batch}, {speed}{rate:.0f} images/s, "
            f"min cosine {best.min_cosine:.5f} to fp32; measured {self.measured_at[:10]}"
            + (f"; others: {', '.join(others)}" if others else "")
        )

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        for m in data["measurements"]:
            m["rates"] = {str(size): rate for size, rate in (m["rates"] or {}).items()} or None
        return data

    @classmethod
    def from_json(cls, data: dict) -> GpuProbe:
        return cls(
            key=data["key"],
            device=data["device"],
            measured_at=data["measured_at"],
            measurements=tuple(
                GpuMeasurement(
                    Runtime(m["runtime"]),
                    Precision(m["precision"]),
                    {int(size): float(rate) for size, rate in m["rates"].items()} if m.get("rates") else None,
                    m.get("min_cosine"),
                    m.get("error"),
                )
                for m in data["measurements"]
            ),
        )


def device_name(device: str) -> str:
    """The GPU's model and compute capability (the cache's key), or the CPU's description on a CPU device."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    from imgvec.embed.cpu import cpu_info

    return cpu_info().describe()


def candidates(device: str, precision: Precision = Precision.AUTO) -> list[tuple[Runtime, Precision]]:
    """torch fp32 (the reference) first, then the autocast precisions this device runs."""
    import torch

    found = [REFERENCE, (Runtime.TORCH, Precision.FP16)]
    bf16 = torch.cuda.is_bf16_supported() if device.startswith("cuda") else True
    if bf16:
        found.append((Runtime.TORCH, Precision.BF16))
    if precision is not Precision.AUTO:
        found = [REFERENCE] + [c for c in found[1:] if c[1] is precision]
    return found


def settle(
    choice: RuntimeChoice,
    *,
    model_key: str,
    preprocessor: Preprocessor,
    build: Builder,
    cache_dir: Path,
    wanted: Sequence[tuple[Runtime, Precision]] | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    compile_best: bool = True,
) -> tuple[RuntimeChoice, GpuProbe]:
    """An AUTO choice on ``choice.device`` made a measured one, from the cache when this GPU model has measured this
    model before. ``wanted``, ``batch_sizes``, ``compile_best``: what to time (tests time less)."""
    wanted = list(wanted or candidates(choice.device, choice.precision))
    device = device_name(choice.device)
    plan = f"{', '.join(f'{r.value} {p.value}' for r, p in wanted)} at {list(batch_sizes)}"
    key = "|".join(["gpu", device, model_key, f"precision {choice.precision.value}", plan, versions()])
    probe = load(cache_dir, key)
    if probe is None:
        log.warning("measuring torch's precisions on %s for %s, once (%s; cached in %s)", device, model_key, plan,
                    cache_dir / PROBE_FILE)  # fmt: skip
        probe = measure(key, device, wanted, build, preprocessor, batch_sizes, compile_best)
        write_cache(cache_dir / PROBE_FILE, probe.key, probe.to_json())
    best = probe.best()
    return choice.settled(best.runtime, best.precision, probe.reason(), best.best_batch[0]), probe


def measure(
    key: str,
    device: str,
    wanted: Sequence[tuple[Runtime, Precision]],
    build: Builder,
    preprocessor: Preprocessor,
    batch_sizes: Sequence[int],
    compile_best: bool,
) -> GpuProbe:
    distinct = probe_pixels(preprocessor, DISTINCT_INPUTS, uint8=True)
    expected: np.ndarray | None = None
    measurements: list[GpuMeasurement] = []
    for runtime, precision in wanted:
        measurement, vectors = _measure_one(runtime, precision, build, distinct, expected, batch_sizes)
        if expected is None and vectors is not None:
            expected = vectors
        measurements.append(measurement)
    if compile_best:
        eager = [m for m in measurements if m.agrees()]
        if eager:
            fastest = max(eager, key=lambda m: m.best_batch[1])
            compiled, _ = _measure_one(Runtime.TORCH_COMPILE, fastest.precision, build, distinct, expected, batch_sizes)
            measurements.append(compiled)
    return GpuProbe(key, device, datetime.now(UTC).isoformat(timespec="seconds"), tuple(measurements))


def _measure_one(
    runtime: Runtime,
    precision: Precision,
    build: Builder,
    distinct: np.ndarray,
    expected: np.ndarray | None,
    batch_sizes: Sequence[int],
) -> tuple[GpuMeasurement, np.ndarray | None]:
    try:
        encode = build(runtime, precision)
        vectors = encode(distinct)  # warm-up (and, compiled, the compile itself)
        cosine = float((vectors * (expected if expected is not None else vectors)).sum(axis=1).min())
        rates = {}
        for size in batch_sizes:
            batch = np.resize(distinct, (size, *distinct.shape[1:]))
            encode(batch)  # each batch size warms up once (allocator, kernel choice, a compile's new shape)
            rates[size] = images_per_second(encode, batch, TIMED_SECONDS, calls_at_least=2)
    except Exception as exc:  # noqa: BLE001 - any failure (out of memory, a compile error) only rules this one out
        log.info("runtime %s %s cannot run here: %s", runtime.value, precision.value, exc)
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return GpuMeasurement(runtime, precision, error=why), None
    log.info("runtime %s %s: %s images/s, min cosine %.6f", runtime.value, precision.value, rates, cosine)
    return GpuMeasurement(runtime, precision, rates, cosine), vectors


def load(cache_dir: Path, key: str) -> GpuProbe | None:
    return load_entry(cache_dir, key, GpuProbe.from_json)

"""``--runtime auto`` on a CPU: measure the runtimes this CPU's flags allow, once, and keep the fastest whose
vectors agree with torch fp32.

Flags say what can run (bf16 needs AMX or AVX512-BF16; int8 pays only with VNNI), not what is fastest: that
depends on the CPU's generation, its core count and the library versions, so it is measured on the model itself,
on a batch of the size the pipeline runs, with every core. The result is cached per CPU, model and library
versions (``runtime-probe.json`` in the cache directory); a new CPU, model or version measures again.

Agreement is checked on the probe batch too: a candidate whose minimum cosine to torch fp32 falls under
``MIN_COSINE`` is never chosen, whatever its speed. ``tests/test_runtime.py`` holds each candidate to that bound on
the full ViT-B/32 architecture.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from imgvec.embed.cpu import CpuInfo
from imgvec.embed.preprocess import Preprocessor
from imgvec.embed.runtime import CPU_BATCH_SIZE, Precision, Runtime, RuntimeChoice

log = logging.getLogger(__name__)

PROBE_FILE = "runtime-probe.json"
MIN_COSINE = 0.999
"""The agreement every runtime must keep with torch fp32 (docs/performance.md has the measured cosines)."""
TIMED_SECONDS = 1.5
"""Each candidate is timed for about this long in all, after one untimed warm-up batch."""
ROUNDS = 3
"""Interleaved timing rounds, each at least one batch; a candidate's rate is its best round."""

T = TypeVar("T")
ImageEncoder = Callable[[np.ndarray], np.ndarray]
Builder = Callable[[Runtime, Precision], ImageEncoder]


@dataclass(frozen=True, slots=True)
class Measurement:
    runtime: Runtime
    precision: Precision
    images_per_second: float | None = None
    min_cosine: float | None = None
    error: str | None = None
    """Why it could not run here (a library missing, a compile failure): it is then never chosen."""

    @property
    def label(self) -> str:
        return f"{self.runtime.value} {self.precision.value}"

    def agrees(self) -> bool:
        return self.error is None and self.min_cosine is not None and self.min_cosine >= MIN_COSINE


@dataclass(frozen=True, slots=True)
class Costs:
    """Measured here: one core's seconds to decode and preprocess a 12 MP JPEG, and the model's core-seconds per
    image. Their ratio sets how many decode workers keep the model fed."""

    decode_core_seconds: float
    model_core_seconds: float


@dataclass(frozen=True, slots=True)
class Probe:
    key: str
    cpu: str
    cores: int
    batch_size: int
    measured_at: str
    measurements: tuple[Measurement, ...]
    decode_core_seconds: float | None = None
    """One core's time to decode and preprocess a camera-sized JPEG (``reference_photo``): with the model's
    cost it sets how many decode workers keep the model fed (``pipeline/tuning.py``)."""

    def best(self) -> Measurement:
        agreeing = [m for m in self.measurements if m.agrees() and m.images_per_second]
        if not agreeing:  # torch fp32 is its own reference: only a failure to run at all leaves nothing
            raise RuntimeError("no runtime could run the model on this CPU")
        return max(agreeing, key=lambda m: m.images_per_second or 0.0)

    def reference(self) -> Measurement | None:
        return next((m for m in self.measurements if (m.runtime, m.precision) == REFERENCE), None)

    def model_core_seconds(self, runtime: Runtime | None = None, precision: Precision | None = None) -> float | None:
        """CPU time a runtime (default: the chosen one) spends per image, all cores together: what the decode
        workers compete with. None when that runtime was not measured here."""
        if runtime is None or precision is None:
            found: Measurement | None = self.best()
        else:
            found = next((m for m in self.measurements if (m.runtime, m.precision) == (runtime, precision)), None)
        if found is None or not found.images_per_second:
            return None
        return self.cores / found.images_per_second

    def costs(self, runtime: Runtime | None = None, precision: Precision | None = None) -> Costs | None:
        model = self.model_core_seconds(runtime, precision)
        if model is None or self.decode_core_seconds is None:
            return None
        return Costs(decode_core_seconds=self.decode_core_seconds, model_core_seconds=model)

    def reason(self, cpu: CpuInfo) -> str:
        best, base = self.best(), self.reference()
        speed = ""
        if base is not None and base.images_per_second and best.images_per_second:
            speed = f"{best.images_per_second / base.images_per_second:.1f}x torch fp32, "
        others = [m for m in self.measurements if m is not best]
        rejected = [f"{m.label} {_why_not(m, best)}" for m in others]
        flags = " ".join(cpu.notable_flags()) or "no AVX2"
        return (
            f"fastest measured on this CPU ({flags}): {speed}{best.images_per_second:.1f} images/s, "
            f"min cosine {best.min_cosine:.5f} to torch fp32; measured {self.measured_at[:10]}"
            + (f"; others: {', '.join(rejected)}" if rejected else "")
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Probe:
        measurements = tuple(
            Measurement(
                runtime=Runtime(m["runtime"]),
                precision=Precision(m["precision"]),
                images_per_second=m.get("images_per_second"),
                min_cosine=m.get("min_cosine"),
                error=m.get("error"),
            )
            for m in data["measurements"]
        )
        return cls(
            key=data["key"],
            cpu=data["cpu"],
            cores=int(data["cores"]),
            batch_size=int(data["batch_size"]),
            measured_at=data["measured_at"],
            measurements=measurements,
            decode_core_seconds=data.get("decode_core_seconds"),
        )


REFERENCE = (Runtime.TORCH, Precision.FP32)


def candidates(cpu: CpuInfo, precision: Precision = Precision.AUTO) -> list[tuple[Runtime, Precision]]:
    """What may run on this CPU, torch fp32 (the reference) first. bf16 only with hardware bf16 (emulated it is
    slower than fp32); int8 only with VNNI (without it, ONNX Runtime's kernels trade accuracy for ~1.4x)."""
    found = [REFERENCE, (Runtime.OPENVINO, Precision.FP32)]
    if cpu.bf16:
        found.append((Runtime.OPENVINO, Precision.BF16))
    if cpu.vnni:
        found.append((Runtime.ONNX, Precision.INT8))
    if precision is not Precision.AUTO:
        found = [REFERENCE] + [c for c in found[1:] if c[1] is precision]
    return found


def settle(
    choice: RuntimeChoice,
    *,
    cpu: CpuInfo,
    model_key: str,
    preprocessor: Preprocessor,
    build: Builder,
    cache_dir: Path,
) -> tuple[RuntimeChoice, Probe]:
    """Turn an AUTO choice into a measured one, from the cache when this CPU has measured this model before."""
    wanted = candidates(cpu, choice.precision)
    key = cache_key(cpu, model_key, choice.precision)
    probe = load(cache_dir, key)
    if probe is None or [(m.runtime, m.precision) for m in probe.measurements] != wanted:
        log.warning(
            "measuring the runtimes this CPU allows for %s, once (%s; cached in %s)",
            model_key,
            ", ".join(f"{r.value} {p.value}" for r, p in wanted),
            cache_dir / PROBE_FILE,
        )
        probe = measure(key, cpu, wanted, build, probe_pixels(preprocessor, CPU_BATCH_SIZE))
        probe = replace(probe, decode_core_seconds=decode_cost(preprocessor))
        save(cache_dir, probe)
    best = probe.best()
    return choice.settled(best.runtime, best.precision, probe.reason(cpu)), probe


def measured_costs(choice: RuntimeChoice, *, cpu: CpuInfo, model_key: str, cache_dir: Path) -> Costs | None:
    """A named runtime's costs, from what ``--runtime auto`` measured on this CPU for this model, if it did."""
    probe = load(cache_dir, cache_key(cpu, model_key, Precision.AUTO))
    return probe.costs(choice.runtime, choice.precision) if probe is not None else None


def cache_key(cpu: CpuInfo, model_key: str, precision: Precision) -> str:
    return "|".join([cpu.signature(), model_key, f"precision {precision.value}", versions()])


def measure(
    key: str, cpu: CpuInfo, wanted: list[tuple[Runtime, Precision]], build: Builder, pixels: np.ndarray
) -> Probe:
    """Build and warm every candidate, then time them in interleaved rounds and keep each one's best round: a
    burst of other work on the machine then slows one round of every candidate, not all of one of them."""
    ready: dict[tuple[Runtime, Precision], tuple[ImageEncoder, float]] = {}
    errors: dict[tuple[Runtime, Precision], str] = {}
    expected: np.ndarray | None = None
    with _all_torch_threads(cpu.cores):
        for runtime, precision in wanted:
            try:
                encode = build(runtime, precision)
                vectors = encode(pixels)  # warm-up: allocations, kernel choice, lazy compilation
            except Exception as exc:  # noqa: BLE001 - any failure only rules this candidate out
                log.info("runtime %s %s cannot run here: %s", runtime.value, precision.value, exc)
                errors[(runtime, precision)] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                continue
            if expected is None:
                expected = vectors
            ready[(runtime, precision)] = (encode, float((vectors * expected).sum(axis=1).min()))
        rates = dict.fromkeys(ready, 0.0)
        for _ in range(ROUNDS):
            for candidate, (encode, _cosine) in ready.items():
                rates[candidate] = max(rates[candidate], images_per_second(encode, pixels, TIMED_SECONDS / ROUNDS))
    measurements = []
    for runtime, precision in wanted:
        if (runtime, precision) in errors:
            measurements.append(Measurement(runtime, precision, error=errors[(runtime, precision)]))
            continue
        rate, cosine = rates[(runtime, precision)], ready[(runtime, precision)][1]
        log.info("runtime %s %s: %.2f images/s, min cosine %.6f", runtime.value, precision.value, rate, cosine)
        measurements.append(Measurement(runtime, precision, images_per_second=rate, min_cosine=cosine))
    return Probe(
        key=key,
        cpu=cpu.describe(),
        cores=cpu.cores,
        batch_size=len(pixels),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        measurements=tuple(measurements),
    )


def probe_pixels(preprocessor: Preprocessor, count: int, *, uint8: bool = False) -> np.ndarray:
    """A fixed batch of photo-like inputs (smooth colour fields, edges and grain): agreement on noise says
    little about photos, and the timing does not depend on the content. ``uint8``: as decode workers send them
    (``Preprocessor.pixels``), normalised by the model; otherwise normalised float32."""
    make = preprocessor.pixels if uint8 else preprocessor
    rng = np.random.default_rng(20261126)
    batch = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse, "RGB").resize((320, 240), Image.Resampling.BICUBIC), np.float32)
        field[rng.integers(0, 120) :, rng.integers(0, 160) :] *= 0.6
        field += rng.normal(0, 8, field.shape).astype(np.float32)
        batch.append(make(Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")))
    return np.stack(batch)


REFERENCE_PHOTO = (4000, 3000)
"""A 12 MP camera JPEG: the common case in a photo collection, and the costliest decode per file among them."""


def reference_photo(size: tuple[int, int] = REFERENCE_PHOTO) -> bytes:
    """A camera-like JPEG (quality 90, 4:2:0, grain), made in memory: what decode costs depends on the entropy
    coded bytes, so it needs a photo's detail, not a flat field."""
    rng = np.random.default_rng(4000)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC), np.int16)
    field += rng.integers(-12, 13, field.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decode_cost(preprocessor: Preprocessor, repeats: int = 3) -> float:
    """Seconds of one core per image: the decode workers' reduced decode plus preprocessing, best of a few."""
    from imgvec.embed.decode import decode_image

    data = reference_photo()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        preprocessor(decode_image(data, reduce_for=preprocessor.reduce_for))
        best = min(best, time.perf_counter() - began)
    return best


def load(cache_dir: Path, key: str) -> Probe | None:
    return load_entry(cache_dir, key, Probe.from_json)


def load_entry(cache_dir: Path, key: str, from_json: Callable[[dict], T]) -> T | None:
    """One measurement from ``runtime-probe.json`` (the CPU's or a GPU's), or None: absent or damaged, measure again."""
    try:
        data = read_cache(cache_dir / PROBE_FILE)
        return from_json(data[key]) if key in data else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def save(cache_dir: Path, probe: Probe) -> None:
    write_cache(cache_dir / PROBE_FILE, probe.key, probe.to_json())


def read_cache(path: Path) -> dict:
    """A measurement cache (this probe's, the text tower's): missing or damaged reads as empty, measured again."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, key: str, value: object) -> None:
    """Atomic, and merged with what other models and CPUs measured (a cache dir on a shared home)."""
    data = read_cache(path)
    data[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs the next run another measurement
        log.warning("cannot cache the measurement in %s: %s", path, exc)


def images_per_second(encode: ImageEncoder, pixels: np.ndarray, seconds: float, *, calls_at_least: int = 1) -> float:
    """Images per second of ``encode`` on ``pixels``, called for ``seconds`` (and at least ``calls_at_least``
    times). It returns host numpy, so a GPU has finished each batch when it returns."""
    calls, began = 0, time.perf_counter()
    while calls < calls_at_least or time.perf_counter() - began < seconds:
        encode(pixels)
        calls += 1
    return calls * len(pixels) / (time.perf_counter() - began)


def _why_not(measurement: Measurement, best: Measurement) -> str:
    if measurement.error:
        return f"cannot run ({measurement.error})"
    if not measurement.agrees():
        return f"disagrees (min cosine {measurement.min_cosine:.5f} < {MIN_COSINE})"
    return f"{measurement.images_per_second:.1f}/s"


@contextlib.contextmanager
def _all_torch_threads(count: int) -> Iterator[None]:
    """torch's thread count is per process: the probe measures every runtime with every core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def versions() -> str:
    """The libraries a measured choice depends on: another version measures again."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} -")
    return ", ".join(found)

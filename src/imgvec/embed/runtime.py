"""Which device, runtime and precision a model runs with: one place that turns ``auto`` into a decision and
refuses combinations that cannot work, before minutes are spent loading weights."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from imgvec.errors import ModelSpecError


class Runtime(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


CPU_BATCH_SIZE = 32
"""On CPU a larger batch buys nothing (the cores are busy from ~8 images on) and delays the first write."""
GPU_BATCH_SIZE = 256
"""Enough images per call to keep a GPU's thousands of lanes busy; ViT-B/32 at fp16 needs well under 1 GiB."""


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    device: str
    """``cpu``, ``cuda`` or ``cuda:N``."""
    runtime: Runtime
    precision: Precision
    """Never AUTO once chosen."""

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def batch_size(self) -> int:
        return GPU_BATCH_SIZE if self.on_gpu else CPU_BATCH_SIZE

    def describe(self) -> str:
        return f"{self.runtime.value} {self.precision.value} on {self.device}"


def resolve_device(device: str) -> str:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU."""
    import torch

    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ModelSpecError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ModelSpecError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return name
    raise ModelSpecError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def choose(device: str = "auto", runtime: str | None = None, precision: str = "auto") -> RuntimeChoice:
    """Resolve the flags. ``runtime`` None: ONNX Runtime for int8 (torch has no fast int8 path for a ViT on CPU),
    torch otherwise. ``precision`` auto: fp16 on a GPU (tensor cores, half the memory), fp32 on a CPU."""
    try:
        wanted = Precision(precision.strip().lower())
    except ValueError:
        raise ModelSpecError(f"--precision {precision!r}: use auto, fp32, fp16 or int8") from None
    try:
        engine = Runtime(runtime.strip().lower()) if runtime else None
    except ValueError:
        raise ModelSpecError(f"--runtime {runtime!r}: use torch or onnx") from None
    resolved = resolve_device(device)
    on_gpu = resolved.startswith("cuda")
    if wanted is Precision.AUTO:
        wanted = Precision.FP16 if on_gpu and engine is not Runtime.ONNX else Precision.FP32
    if engine is None:
        engine = Runtime.ONNX if wanted is Precision.INT8 else Runtime.TORCH
    if wanted is Precision.INT8:
        if engine is Runtime.TORCH:
            raise ModelSpecError("--precision int8 runs through ONNX Runtime; use --runtime onnx (or leave it out)")
        if on_gpu:
            raise ModelSpecError("--precision int8 is dynamic quantisation for CPUs; on a GPU use fp16 (the default)")
    if wanted is Precision.FP16:
        if not on_gpu:
            raise ModelSpecError("--precision fp16 needs a CUDA GPU; on a CPU use fp32 or int8")
        if engine is Runtime.ONNX:
            raise ModelSpecError("--precision fp16 runs through torch; use --runtime torch on the GPU")
    return RuntimeChoice(device=resolved, runtime=engine, precision=wanted)

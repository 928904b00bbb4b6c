"""Which device, runtime and precision a model runs with: one place that turns the flags into a decision and
refuses combinations that cannot work, before minutes are spent loading weights.

On a CPU, ``--runtime auto`` (the default) is settled only once the model is loaded: ``embed/probe.py`` measures
the candidates this CPU's flags allow and keeps the fastest whose vectors agree with torch fp32. The flags alone
cannot say it: the same bf16 kernels are 4x torch on one machine and slower than fp32 on another. On a CUDA GPU
``embed/gpu_probe.py`` does the same for torch's fp16 and bf16 autocast and ``torch.compile``, at a few batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from imgvec.embed.cpu import CpuInfo, cpu_info
from imgvec.errors import RuntimeChoiceError


class Runtime(StrEnum):
    AUTO = "auto"
    TORCH = "torch"
    ONNX = "onnx"
    OPENVINO = "openvino"
    TORCH_COMPILE = "torch-compile"
    """torch with the image tower through ``torch.compile`` (a GPU: its first batches compile)."""


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
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
    """AUTO until the probe has measured this CPU (``resolved``)."""
    precision: Precision
    """AUTO only while ``runtime`` is: the probe decides both."""
    reason: str = ""
    """Why this runtime, in words: shown by ``imgvec estimate`` and in the run's progress and metrics."""
    measured_batch: int | None = None
    """On a GPU: the batch size at which the chosen runtime was fastest (``gpu_probe``), for a run not told one."""

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def resolved(self) -> bool:
        return self.runtime is not Runtime.AUTO and self.precision is not Precision.AUTO

    @property
    def batch_size(self) -> int:
        if self.measured_batch:
            return self.measured_batch
        return GPU_BATCH_SIZE if self.on_gpu else CPU_BATCH_SIZE

    def describe(self) -> str:
        if self.runtime is Runtime.AUTO:
            precision = "" if self.precision is Precision.AUTO else f" {self.precision.value}"
            return f"auto{precision} on {self.device} (measured when the model loads)"
        return f"{self.runtime.value} {self.precision.value} on {self.device}"

    def settled(
        self, runtime: Runtime, precision: Precision, reason: str, measured_batch: int | None = None
    ) -> RuntimeChoice:
        return replace(self, runtime=runtime, precision=precision, reason=reason, measured_batch=measured_batch)


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
            raise RuntimeChoiceError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise RuntimeChoiceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return name
    raise RuntimeChoiceError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def choose(
    device: str = "auto", runtime: str | None = None, precision: str = "auto", cpu: CpuInfo | None = None
) -> RuntimeChoice:
    """Resolve the flags as far as they can be without measuring.

    A precision names its runtime where only one runs it (int8: ONNX Runtime, bf16: OpenVINO on a CPU, fp16: torch
    on a GPU). auto stays AUTO for the probe (the CPU's, or the GPU's), restricted to the precision asked for, if
    any; a runtime named on a GPU without a precision runs fp16."""
    try:
        wanted = Precision(precision.strip().lower())
    except ValueError:
        raise RuntimeChoiceError(f"--precision {precision!r}: use auto, fp32, bf16, int8 or fp16") from None
    try:
        engine = Runtime((runtime or "auto").strip().lower())
    except ValueError:
        raise RuntimeChoiceError(f"--runtime {runtime!r}: use auto, torch, torch-compile, onnx or openvino") from None
    resolved = resolve_device(device)
    on_gpu = resolved.startswith("cuda")
    cpu = cpu or cpu_info()
    by_precision = {Precision.INT8: Runtime.ONNX, Precision.BF16: Runtime.OPENVINO}
    if engine is Runtime.AUTO and not on_gpu and wanted in by_precision:
        engine = by_precision[wanted]
    if on_gpu:
        if engine is Runtime.OPENVINO:
            raise RuntimeChoiceError("--runtime openvino runs on the CPU; use --device cpu, or torch on the GPU")
        if wanted is Precision.INT8:
            raise RuntimeChoiceError("--precision int8 is for CPUs; on a GPU use fp16, bf16 or fp32 (or auto)")
        if engine is Runtime.ONNX and wanted not in (Precision.AUTO, Precision.FP32):
            raise RuntimeChoiceError(
                f"--precision {wanted.value} on a GPU runs through torch; use --runtime torch (or auto)"
            )
        return _gpu_choice(resolved, engine, wanted)
    if engine is Runtime.TORCH_COMPILE:
        raise RuntimeChoiceError(
            "--runtime torch-compile is for a CUDA GPU; on a CPU use auto, torch, onnx or openvino"
        )
    if wanted is Precision.AUTO and engine is not Runtime.AUTO:
        wanted = _default_precision(engine, on_gpu, cpu)
    reason = "asked for by name" if engine is not Runtime.AUTO else ""
    if wanted is Precision.INT8 and engine is not Runtime.ONNX:
        raise RuntimeChoiceError("--precision int8 runs through ONNX Runtime; use --runtime onnx (or auto)")
    if wanted is Precision.BF16:
        if engine is not Runtime.OPENVINO:
            raise RuntimeChoiceError("--precision bf16 runs through OpenVINO; use --runtime openvino (or auto)")
        if not cpu.bf16:
            raise RuntimeChoiceError(
                "--precision bf16 needs a CPU with AMX or AVX512-BF16 (this one has "
                f"{' '.join(cpu.notable_flags()) or 'neither'}); use --precision fp32 or int8, or --runtime auto"
            )
    if wanted is Precision.FP16:
        if not on_gpu:
            raise RuntimeChoiceError("--precision fp16 needs a CUDA GPU; on a CPU use bf16, fp32 or int8 (or auto)")
        if engine is not Runtime.TORCH:
            raise RuntimeChoiceError("--precision fp16 runs through torch; use --runtime torch on the GPU")
    return RuntimeChoice(device=resolved, runtime=engine, precision=wanted, reason=reason)


def _gpu_choice(device: str, engine: Runtime, wanted: Precision) -> RuntimeChoice:
    """auto: measured once the model is loaded (``gpu_probe``), among the precision asked for, if any."""
    if engine is Runtime.AUTO:
        return RuntimeChoice(device=device, runtime=Runtime.AUTO, precision=wanted)
    if wanted is Precision.AUTO:
        wanted = Precision.FP32 if engine is Runtime.ONNX else Precision.FP16
    return RuntimeChoice(device=device, runtime=engine, precision=wanted, reason="asked for by name")


def _default_precision(engine: Runtime, on_gpu: bool, cpu: CpuInfo) -> Precision:
    if on_gpu and engine is Runtime.TORCH:
        return Precision.FP16
    if engine is Runtime.OPENVINO and cpu.bf16:
        return Precision.BF16
    return Precision.FP32

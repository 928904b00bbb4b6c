"""The image tower run by OpenVINO's CPU plugin, from the same checked ONNX export ONNX Runtime uses.

Its bf16 path is what makes a CPU with AMX or AVX512-BF16 fast: matrix products in bf16 with fp32 sums, the
normalisations and the softmax kept in fp32. Its fp32 path is asked for explicitly, since the plugin turns bf16
on by itself wherever the CPU has it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from imgvec.embed.cpu import usable_cores
from imgvec.embed.runtime import Precision
from imgvec.errors import ModelLoadError

log = logging.getLogger(__name__)

_HINTS = {Precision.FP32: "f32", Precision.BF16: "bf16"}


class OpenVinoImageEncoder:
    """(N, 3, H, W) float32 → (N, D) L2-normalised float32, through OpenVINO on the CPU."""

    def __init__(self, fp32: Path, *, precision: Precision, threads: int | None, cache_dir: Path) -> None:
        try:
            ov = openvino()
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ModelLoadError("--runtime openvino needs openvino: pip install openvino") from exc
        if precision not in _HINTS:
            raise ModelLoadError(f"OpenVINO runs fp32 or bf16 here, not {precision.value}")
        self.precision = precision
        core = ov.Core()
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            # One stream, all its threads on each batch: a batch is one call, and THROUGHPUT's several streams
            # leave all but one idle (half the speed on 2 cores).
            "PERFORMANCE_HINT": "LATENCY",
            # The compiled graph is kept, so a second process skips the few seconds of compilation.
            "CACHE_DIR": str(cache_dir / "openvino"),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if threads and threads < usable_cores():
            # A share of the cores (a Ray worker beside others): OpenVINO would pin its threads to the first
            # cores, the same ones in every such process, and two workers would run their models on one core.
            config["ENABLE_CPU_PINNING"] = False
        try:
            compiled = core.compile_model(str(fp32), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"OpenVINO cannot compile the image tower: {exc}; use --runtime onnx") from exc
        self._request = compiled.create_infer_request()
        log.info("OpenVINO %s: %s", precision.value, compiled.get_property("EXECUTION_DEVICES"))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        result = self._request.infer({0: batch}, share_inputs=True)
        return np.array(result[0], dtype=np.float32)


def openvino() -> ModuleType:
    """``import openvino``, without its usage telemetry. The package sends an event to Google Analytics from a forked
    process on every import unless the user has opted out in ``~/intel``; an indexer that reads private photo
    collections does not phone home, and a fork of a process running LanceDB's threads is unsafe. With the
    telemetry package hidden, OpenVINO falls back to its own no-op stub."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # its import then fails
    import openvino as ov

    return ov

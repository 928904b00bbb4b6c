"""``--runtime auto`` on a GPU (``embed/gpu_probe.py``), run on the CPU device: the same measuring, agreement rule,
choice of batch size and cache as on a CUDA GPU, with the tiny CLIP and torch's CPU autocast. And the model's side
of the uint8 path: pixels are normalised where the model runs, equal to the CPU workers' float32 of before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imgvec.embed import gpu_probe
from imgvec.embed.probe import MIN_COSINE, PROBE_FILE, probe_pixels
from imgvec.embed.runtime import Precision, Runtime, RuntimeChoice

WANTED = [(Runtime.TORCH, Precision.FP32), (Runtime.TORCH, Precision.BF16), (Runtime.OPENVINO, Precision.FP16)]
"""fp32 (the reference), bf16 autocast, and one that cannot run (OpenVINO has no fp16 here): recorded, never chosen."""


def test_the_gpu_probe_keeps_the_fastest_agreeing_precision_and_batch_and_caches_it(tiny_embedder, tmp_path: Path):
    built: list[tuple[Runtime, Precision]] = []

    def build(runtime: Runtime, precision: Precision):
        built.append((runtime, precision))
        return tiny_embedder.image_encoder(runtime, precision)

    choice = RuntimeChoice("cpu", Runtime.AUTO, Precision.AUTO)
    settle = dict(
        model_key="tiny",
        preprocessor=tiny_embedder.preprocessor,
        build=build,
        cache_dir=tmp_path,
        wanted=WANTED,
        batch_sizes=(4, 32),
        compile_best=False,
    )
    settled, probe = gpu_probe.settle(choice, **settle)
    fp32, bf16, openvino = probe.measurements
    assert fp32.min_cosine == pytest.approx(1.0, abs=1e-6) and set(fp32.rates) == {4, 32}
    assert bf16.rates and bf16.min_cosine is not None and bf16.min_cosine < 1.0  # really ran in bf16
    assert openvino.error and "OpenVINO runs fp32 or bf16" in openvino.error and not openvino.agrees()
    best = max((m for m in (fp32, bf16) if m.min_cosine >= MIN_COSINE), key=lambda m: m.best_batch[1])
    assert (settled.runtime, settled.precision) == (best.runtime, best.precision)
    assert settled.resolved and settled.measured_batch == best.best_batch[0] == settled.batch_size
    assert settled.reason.startswith(f"fastest measured on {gpu_probe.device_name('cpu')}: torch ")
    assert "openvino fp16 cannot run" in settled.reason
    assert (tmp_path / PROBE_FILE).is_file()

    built.clear()
    again, cached = gpu_probe.settle(choice, **settle)
    assert built == [] and again == settled and cached == probe  # this device measured this model before

    only_bf16, _ = gpu_probe.settle(RuntimeChoice("cpu", Runtime.AUTO, Precision.BF16), **settle | {"wanted": None})
    assert only_bf16.precision in (Precision.FP32, Precision.BF16)  # fp32 stays as the reference
    assert gpu_probe.candidates("cpu", Precision.BF16) == [
        (Runtime.TORCH, Precision.FP32),
        (Runtime.TORCH, Precision.BF16),
    ]


def test_the_fastest_eager_precision_is_timed_compiled_too(tiny_embedder, tmp_path: Path) -> None:
    """``torch.compile`` (inductor, here for the CPU) on the fastest eager precision: timed and held to the same
    agreement at every batch size, and kept only if it is faster; the run's vectors then come from it."""
    settled, probe = gpu_probe.settle(
        RuntimeChoice("cpu", Runtime.AUTO, Precision.AUTO),
        model_key="tiny",
        preprocessor=tiny_embedder.preprocessor,
        build=tiny_embedder.image_encoder,
        cache_dir=tmp_path,
        wanted=WANTED[:1],
        batch_sizes=(8, 16),
    )
    eager, compiled = probe.measurements
    assert (compiled.runtime, compiled.precision) == (Runtime.TORCH_COMPILE, Precision.FP32)
    assert compiled.error is None, compiled.error  # this machine has a C compiler for inductor (CI's too)
    assert compiled.min_cosine >= MIN_COSINE and set(compiled.rates) == {8, 16}
    faster = compiled.best_batch[1] > eager.best_batch[1]
    assert settled.runtime is (Runtime.TORCH_COMPILE if faster else Runtime.TORCH)
    pixels = probe_pixels(tiny_embedder.preprocessor, 3, uint8=True)
    through_compile = tiny_embedder.image_encoder(Runtime.TORCH_COMPILE, Precision.FP32)(pixels)
    np.testing.assert_allclose(through_compile, tiny_embedder.torch_images(pixels), atol=1e-4)


def test_uint8_pixels_are_normalised_where_the_model_runs(tiny_embedder) -> None:
    """Decode workers send uint8; numpy, a CPU tensor (the lane's) and the normalised float32 of before embed
    alike, and each runtime's input is the float32 the reference preprocessing makes."""
    pre = tiny_embedder.preprocessor
    raw = probe_pixels(pre, 6, uint8=True)
    assert raw.dtype == np.uint8 and raw.shape == (6, 3, 224, 224)
    normalised = pre.normalise(raw)
    reference = (raw / np.float32(255.0) - np.asarray(pre.mean, np.float32)[:, None, None]) / np.asarray(
        pre.std, np.float32
    )[:, None, None]
    np.testing.assert_allclose(normalised, reference, atol=1e-5)
    expected = tiny_embedder.embed_images(normalised)
    np.testing.assert_allclose(tiny_embedder.embed_images(raw), expected, atol=1e-5)
    np.testing.assert_allclose(tiny_embedder.embed_images(torch.from_numpy(raw)), expected, atol=1e-5)

"""Runtimes and precisions: the choice matrix, and the ONNX image tower against torch on the same weights."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from imgvec.embed.runtime import Precision, Runtime, choose
from imgvec.errors import ModelSpecError
from tests.conftest import TINY_MODEL
from tests.helpers import photo


def test_cpu_defaults_to_torch_fp32_and_int8_to_onnx() -> None:
    assert choose("cpu") == choose("cpu", None, "fp32")
    assert (choose("cpu").runtime, choose("cpu").precision) == (Runtime.TORCH, Precision.FP32)
    int8 = choose("cpu", None, "int8")
    assert (int8.runtime, int8.precision, int8.batch_size) == (Runtime.ONNX, Precision.INT8, 32)
    assert choose("auto").device in ("cpu", "cuda")


@pytest.mark.parametrize(
    ("device", "runtime", "precision", "message"),
    [
        ("cpu", "torch", "int8", "int8 runs through ONNX Runtime"),
        ("cpu", None, "fp16", "fp16 needs a CUDA GPU"),
        ("cpu", None, "fp64", "use auto, fp32, fp16 or int8"),
        ("cpu", "tensorrt", "auto", "use torch or onnx"),
        ("tpu", None, "auto", "use auto, cpu, cuda or cuda:N"),
    ],
)
def test_impossible_combinations_are_refused_before_loading(device, runtime, precision, message) -> None:
    with pytest.raises(ModelSpecError, match=message):
        choose(device, runtime, precision)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ModelSpecError, match="sees no CUDA GPU"):
        choose("cuda")


@pytest.fixture(scope="module")
def pixels(tiny_embedder) -> np.ndarray:
    return np.stack([tiny_embedder.preprocessor(photo(seed, (300, 200))) for seed in range(8)])


def load(settings, cache_dir, **changes):
    with pytest.warns(UserWarning, match="random weights"):
        return dataclasses.replace(settings, cache_dir=cache_dir, **changes).load_embedder(TINY_MODEL)


def test_onnx_fp32_gives_torch_vectors_and_int8_stays_close(settings, tiny_embedder, pixels, tmp_path) -> None:
    expected = tiny_embedder.embed_images(pixels)
    onnx = load(settings, tmp_path, runtime="onnx")
    int8 = load(settings, tmp_path, precision="int8")
    assert onnx.runtime.describe() == "onnx fp32 on cpu" and int8.runtime.describe() == "onnx int8 on cpu"
    assert onnx.identity == tiny_embedder.identity == int8.identity
    fp32_vectors, int8_vectors = onnx.embed_images(pixels), int8.embed_images(pixels)
    assert fp32_vectors.dtype == np.float32 and fp32_vectors.shape == expected.shape
    assert (fp32_vectors * expected).sum(axis=1).min() >= 0.9999
    assert (int8_vectors * expected).sum(axis=1).min() >= 0.98
    np.testing.assert_allclose(np.linalg.norm(int8_vectors, axis=1), 1.0, atol=1e-5)
    # The same weights rank the same way: each image is its own nearest neighbour under either runtime.
    assert ((int8_vectors @ expected.T).argmax(axis=1) == np.arange(len(pixels))).all()


def test_the_export_is_cached_per_weights(settings, tmp_path) -> None:
    first = load(settings, tmp_path, runtime="onnx")
    path = first._onnx.path
    written = path.stat().st_mtime_ns
    again = load(settings, tmp_path, runtime="onnx")
    assert again._onnx.path == path and path.stat().st_mtime_ns == written
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left behind

    import torch

    with torch.no_grad():
        next(first._model.visual.parameters()).add_(0.5)  # other weights under the same name → a new export
    from imgvec.embed.onnx import OnnxImageEncoder

    changed = OnnxImageEncoder(
        first._model, image_size=(224, 224), precision=Precision.FP32, device="cpu", threads=1, cache_dir=tmp_path
    )
    assert changed.path != path and os.path.getsize(changed.path) > 0


@pytest.mark.slow
def test_full_vit_b_32_agreement_across_runtimes(settings, tmp_path) -> None:
    """docs/performance.md quotes this: ONNX fp32 vs torch >= 0.9999, int8 vs torch >= 0.999 (~0.9997)."""
    full = dataclasses.replace(settings, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="random weights"):
        torch_model = full.load_embedder("ViT-B-32/random")
        onnx = dataclasses.replace(full, runtime="onnx").load_embedder("ViT-B-32/random")
        int8 = dataclasses.replace(full, precision="int8").load_embedder("ViT-B-32/random")
    pixels = np.stack([torch_model.preprocessor(photo(seed, (640, 480))) for seed in range(16)])
    expected = torch_model.embed_images(pixels)
    fp32_cosine = (onnx.embed_images(pixels) * expected).sum(axis=1)
    int8_cosine = (int8.embed_images(pixels) * expected).sum(axis=1)
    print(f"onnx fp32 vs torch: min {fp32_cosine.min():.6f}; int8 vs torch: min {int8_cosine.min():.4f}")
    assert fp32_cosine.min() >= 0.9999
    assert int8_cosine.min() >= 0.999

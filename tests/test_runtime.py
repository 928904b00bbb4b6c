"""Runtimes and precisions: the choice matrix, the measured auto choice, the worker split, and every runtime's
vectors against torch fp32 on the same weights."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imgvec import wiring
from imgvec.embed.cpu import CpuInfo, cpu_info
from imgvec.embed.onnx import OnnxImageEncoder, exported_tower
from imgvec.embed.openvino import OpenVinoImageEncoder
from imgvec.embed.probe import PROBE_FILE, Measurement, Probe, candidates
from imgvec.embed.runtime import Precision, Runtime, choose
from imgvec.errors import RuntimeChoiceError
from imgvec.pipeline.tuning import split_workers
from tests.conftest import TINY_MODEL
from tests.helpers import photo

AVX2_EPYC = CpuInfo("AMD EPYC 7B12", frozenset({"avx2", "fma"}), 2)
ZEN4_EPYC = CpuInfo("AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), 2)
AMX_XEON = CpuInfo(
    "Intel(R) Xeon(R) Platinum 8481C",
    frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}),
    2,
)


def test_auto_on_a_cpu_is_left_to_the_probe_and_a_precision_names_its_runtime() -> None:
    auto = choose("cpu")
    assert (auto.runtime, auto.precision, auto.resolved) == (Runtime.AUTO, Precision.AUTO, False)
    assert "auto" in auto.describe() and auto.batch_size == 32
    assert choose("cpu", "auto", "fp32").precision is Precision.FP32  # auto among the fp32 runtimes
    int8 = choose("cpu", None, "int8")
    assert (int8.runtime, int8.precision, int8.resolved) == (Runtime.ONNX, Precision.INT8, True)
    bf16 = choose("cpu", None, "bf16", cpu=AMX_XEON)
    assert (bf16.runtime, bf16.precision, bf16.reason) == (Runtime.OPENVINO, Precision.BF16, "asked for by name")
    assert choose("cpu", "openvino", cpu=ZEN4_EPYC).precision is Precision.BF16  # the plugin's own default
    assert choose("cpu", "openvino", cpu=AVX2_EPYC).precision is Precision.FP32
    assert choose("cpu", "torch").describe() == "torch fp32 on cpu"
    assert choose("auto").device in ("cpu", "cuda")


@pytest.mark.parametrize(
    ("device", "runtime", "precision", "message"),
    [
        ("cpu", "torch", "int8", "int8 runs through ONNX Runtime"),
        ("cpu", "onnx", "bf16", "bf16 runs through OpenVINO"),
        ("cpu", None, "fp16", "fp16 needs a CUDA GPU"),
        ("cpu", None, "fp64", "use auto, fp32, bf16, int8 or fp16"),
        ("cpu", "tensorrt", "auto", "use auto, torch, torch-compile, onnx or openvino"),
        ("cpu", "torch-compile", "auto", "torch-compile is for a CUDA GPU"),
        ("tpu", None, "auto", "use auto, cpu, cuda or cuda:N"),
    ],
)
def test_impossible_combinations_are_refused_before_loading(device, runtime, precision, message) -> None:
    with pytest.raises(RuntimeChoiceError, match=message):
        choose(device, runtime, precision)


def test_bf16_on_a_cpu_without_it_says_which_flags_it_needs() -> None:
    with pytest.raises(RuntimeChoiceError, match="needs a CPU with AMX or AVX512-BF16 \\(this one has avx2\\)"):
        choose("cpu", None, "bf16", cpu=AVX2_EPYC)


def test_candidates_follow_the_cpu_flags() -> None:
    """bf16 only with hardware bf16, int8 only with VNNI; torch fp32, the reference, always first."""
    assert candidates(AVX2_EPYC) == [(Runtime.TORCH, Precision.FP32), (Runtime.OPENVINO, Precision.FP32)]
    full = [
        (Runtime.TORCH, Precision.FP32),
        (Runtime.OPENVINO, Precision.FP32),
        (Runtime.OPENVINO, Precision.BF16),
        (Runtime.ONNX, Precision.INT8),
    ]
    assert candidates(ZEN4_EPYC) == full and candidates(AMX_XEON) == full
    assert candidates(AMX_XEON, Precision.FP32) == full[:2]
    assert AMX_XEON.amx and not ZEN4_EPYC.amx and ZEN4_EPYC.bf16 and not AVX2_EPYC.vnni


def probe_of(rates: dict[str, tuple[float, float]], cpu: CpuInfo) -> Probe:
    measurements = []
    for label, (rate, cosine) in rates.items():
        runtime, precision = label.split()
        measurements.append(Measurement(Runtime(runtime), Precision(precision), rate, cosine))
    return Probe("key", cpu.describe(), cpu.cores, 32, "2026-11-26T00:00:00+00:00", tuple(measurements))


def test_the_fastest_agreeing_runtime_wins() -> None:
    # The figures for a 2-core Xeon with AMX (ViT-B/32, batch 32).
    amx = probe_of(
        {
            "torch fp32": (34.5, 1.0),
            "openvino fp32": (34.9, 1.0),
            "openvino bf16": (138.6, 0.99994),
            "onnx int8": (84.6, 0.9997),
        },
        AMX_XEON,
    )
    assert amx.best().label == "openvino bf16"
    assert "4.0x torch fp32" in amx.reason(AMX_XEON) and "onnx int8 84.6/s" in amx.reason(AMX_XEON)
    assert amx.model_core_seconds() == pytest.approx(2 / 138.6)
    assert amx.model_core_seconds(Runtime.ONNX, Precision.INT8) == pytest.approx(2 / 84.6)
    assert amx.costs() is None  # no decode measured: the worker split keeps its default
    assert dataclasses.replace(amx, decode_core_seconds=0.04).costs().model_core_seconds == pytest.approx(2 / 138.6)
    # On an AVX2-only EPYC only fp32 runs; OpenVINO's may or may not beat torch: the measurement decides.
    assert probe_of({"torch fp32": (13.0, 1.0), "openvino fp32": (12.1, 1.0)}, AVX2_EPYC).best().label == "torch fp32"
    # A faster runtime that disagrees, or one that cannot run, is never chosen.
    bad = probe_of({"torch fp32": (20.0, 1.0), "openvino bf16": (90.0, 0.998)}, ZEN4_EPYC)
    bad = dataclasses.replace(
        bad, measurements=(*bad.measurements, Measurement(Runtime.ONNX, Precision.INT8, error="x"))
    )
    assert bad.best().label == "torch fp32"
    assert "openvino bf16 disagrees (min cosine 0.99800 < 0.999)" in bad.reason(ZEN4_EPYC)
    assert "onnx int8 cannot run (x)" in bad.reason(ZEN4_EPYC)


def test_the_split_gives_decode_more_workers_when_the_model_is_fast() -> None:
    gib = 1 << 30
    decode = 0.037  # one core's reduced decode + preprocess of a 12 MP JPEG
    assert split_workers(decode, 2 / 22.5, count=2, available=20 * gib) == 2  # torch fp32: the model dominates
    assert split_workers(decode, 2 / 91.0, count=2, available=20 * gib) == 3  # OpenVINO bf16: decode dominates
    assert split_workers(0.010, 2 / 91.0, count=2, available=20 * gib) == 2  # 1080p
    assert split_workers(decode, 0.0001, count=2, available=20 * gib) == 3  # a tiny model: all cores plus one
    assert split_workers(decode, 0.0001, count=16, available=1 * gib) == 1  # memory still caps it


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(RuntimeChoiceError, match="sees no CUDA GPU"):
        choose("cuda")


@pytest.fixture(scope="module")
def torch_embedder(settings):
    with pytest.warns(UserWarning, match="random weights"):
        return wiring.load_embedder(dataclasses.replace(settings, runtime="torch"), TINY_MODEL)


@pytest.fixture(scope="module")
def pixels(torch_embedder) -> np.ndarray:
    return np.stack([torch_embedder.preprocessor(photo(seed, (300, 200))) for seed in range(8)])


def load(settings, cache_dir, **changes):
    with pytest.warns(UserWarning, match="random weights"):
        return wiring.load_embedder(dataclasses.replace(settings, cache_dir=cache_dir, **changes), TINY_MODEL)


def test_exported_runtimes_give_torch_vectors(settings, torch_embedder, pixels, tmp_path) -> None:
    expected = torch_embedder.embed_images(pixels)
    onnx = load(settings, tmp_path, runtime="onnx")
    openvino = load(settings, tmp_path, runtime="openvino", precision="fp32")
    int8 = load(settings, tmp_path, precision="int8")
    assert onnx.runtime.describe() == "onnx fp32 on cpu" and int8.runtime.describe() == "onnx int8 on cpu"
    assert openvino.runtime.describe() == "openvino fp32 on cpu" and openvino.runtime.reason == "asked for by name"
    assert onnx.identity == torch_embedder.identity == int8.identity == openvino.identity
    for exported in (onnx, openvino):
        vectors = exported.embed_images(pixels)
        assert vectors.dtype == np.float32 and vectors.shape == expected.shape
        assert (vectors * expected).sum(axis=1).min() >= 0.9999
    int8_vectors = int8.embed_images(pixels)
    assert (int8_vectors * expected).sum(axis=1).min() >= 0.98
    np.testing.assert_allclose(np.linalg.norm(int8_vectors, axis=1), 1.0, atol=1e-5)
    # The same weights rank the same way: each image is its own nearest neighbour under either runtime.
    assert ((int8_vectors @ expected.T).argmax(axis=1) == np.arange(len(pixels))).all()


def test_the_export_is_cached_per_weights(settings, tmp_path) -> None:
    first = load(settings, tmp_path, runtime="onnx")
    assert not (tmp_path / "onnx").exists()  # exported on the first image, not at load: a text query needs none
    first.embed_images(np.zeros((1, 3, 224, 224), np.float32))
    folder = tmp_path / "onnx"
    (path,) = folder.iterdir()
    written = path.stat().st_mtime_ns
    load(settings, tmp_path, runtime="onnx").embed_images(np.zeros((1, 3, 224, 224), np.float32))
    assert list(folder.iterdir()) == [path] and path.stat().st_mtime_ns == written  # no temporary files either

    import torch

    with torch.no_grad():
        next(first._model.visual.parameters()).add_(0.5)  # other weights under the same name → a new export
    changed = exported_tower(first._model, (224, 224), tmp_path)
    assert changed != path and os.path.getsize(changed) > 0


def test_auto_measures_once_per_cpu_and_model_and_keeps_the_choice(settings, torch_embedder, pixels, tmp_path) -> None:
    first = load(settings, tmp_path)
    cache = tmp_path / PROBE_FILE
    first.embed_texts(["a query"])
    assert not cache.exists()  # a text query never measures the image runtimes
    assert first.runtime.resolved  # the first look at the runtime settles it
    record = json.loads(cache.read_text())
    (probe,) = record.values()
    measured = [(m["runtime"], m["precision"]) for m in probe["measurements"]]
    assert measured == [(r.value, p.value) for r, p in candidates(cpu_info())]
    assert probe["decode_core_seconds"] > 0 and probe["cores"] == cpu_info().cores
    assert first.runtime.resolved and first.runtime.reason.startswith("fastest measured on this CPU")
    best = first.probe.best()
    assert (first.runtime.runtime, first.runtime.precision) == (best.runtime, best.precision)
    assert best.min_cosine >= 0.999
    assert (first.embed_images(pixels) * torch_embedder.embed_images(pixels)).sum(axis=1).min() >= 0.999

    written = cache.stat().st_mtime_ns
    again = load(settings, tmp_path)
    assert again.runtime == first.runtime and cache.stat().st_mtime_ns == written  # read, not measured again

    costs = first.costs()
    assert costs.model_core_seconds == pytest.approx(cpu_info().cores / best.images_per_second)
    # A named runtime borrows what auto measured for it here; one never measured keeps the default split.
    named = load(settings, tmp_path, runtime="torch").costs()
    torch_rate = next(m for m in first.probe.measurements if m.label == "torch fp32").images_per_second
    assert named.model_core_seconds == pytest.approx(cpu_info().cores / torch_rate)
    assert load(settings, tmp_path / "elsewhere", runtime="torch").costs() is None

    cache.write_text("{not json")  # a damaged cache measures again instead of failing the run
    assert load(settings, tmp_path).runtime.resolved
    assert list(json.loads(cache.read_text())) == list(record)


@pytest.mark.slow
def test_full_vit_b_32_agreement_across_runtimes(settings, tmp_path) -> None:
    """docs/performance.md quotes this: every runtime --runtime auto may choose, against torch fp32 on the full
    ViT-B/32 architecture: ONNX and OpenVINO fp32 >= 0.9999; OpenVINO bf16 and both int8 weight ranges >= 0.999."""
    with pytest.warns(UserWarning, match="random weights"):
        model = wiring.load_embedder(
            dataclasses.replace(settings, cache_dir=tmp_path, runtime="torch"), "ViT-B-32/random"
        )
    pixels = np.stack([model.preprocessor(photo(seed, (640, 480))) for seed in range(16)])
    expected = model.embed_images(pixels)
    fp32 = exported_tower(model._model, (224, 224), tmp_path)
    encoders = {
        "onnx fp32": OnnxImageEncoder(fp32, precision=Precision.FP32, device="cpu", threads=None, vnni=False),
        "openvino fp32": OpenVinoImageEncoder(fp32, precision=Precision.FP32, threads=None, cache_dir=tmp_path),
        "openvino bf16": OpenVinoImageEncoder(fp32, precision=Precision.BF16, threads=None, cache_dir=tmp_path),
        "onnx int8 (8-bit, VNNI)": OnnxImageEncoder(
            fp32, precision=Precision.INT8, device="cpu", threads=None, vnni=True
        ),
        "onnx int8 (7-bit)": OnnxImageEncoder(fp32, precision=Precision.INT8, device="cpu", threads=None, vnni=False),
    }
    cosines = {name: float((encode(pixels) * expected).sum(axis=1).min()) for name, encode in encoders.items()}
    print("min cosine to torch fp32:", {name: round(value, 6) for name, value in cosines.items()})
    assert cosines["onnx fp32"] >= 0.9999 and cosines["openvino fp32"] >= 0.9999
    assert min(cosines.values()) >= 0.999


def test_openvino_is_imported_without_its_telemetry() -> None:
    """`import openvino` alone forks a process that sends a usage event to Google Analytics (unless opted out in
    ~/intel); imgvec's import hides the telemetry package, so OpenVINO takes its no-op stub."""
    code = (
        "import sys; from imgvec.embed.openvino import openvino; ov = openvino();"
        "from openvino.tools.ovc import telemetry_utils as t;"
        "print(t.tm.__name__, sys.modules['openvino_telemetry'], ov.Core().available_devices)"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # the package would stay quiet in CI anyway
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[:2] == ["openvino.tools.ovc.telemetry_stub", "None"]

"""The text tower out of torch: exported to ONNX once per weights, run by ONNX Runtime or OpenVINO, chosen by
measuring a lone query on this CPU.

A search's text query is one short call, so what matters is the latency of a batch of one, not throughput: the
candidates are timed that way (``choose``), and one that disagrees with torch fp32 (cosine below
``TEXT_AGREEMENT`` on sample queries) is never used. The choice is cached per CPU and weights, as the image probe's
is; a long-lived process (``imgvec serve``) settles it when it loads the model, so no request pays for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgvec.embed import probe
from imgvec.embed.cpu import cpu_info
from imgvec.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPSET = 17
TEXT_AGREEMENT = 0.999
"""The minimum cosine to torch fp32 a runtime's text vectors must reach on the sample queries."""
SAMPLE_QUERIES = (
    "a dog running on a beach",
    "red car parked in the snow at night",
    "birthday cake with candles",
    "an old stone church in a small village, seen from the hill",
    "x",
)
TIMED_CALLS = 12
TextEncoder = Callable[[np.ndarray], np.ndarray]
"""(N, context) int64 tokens → (N, D) L2-normalised float32."""


def exported_text_tower(model: torch.nn.Module, tokens: np.ndarray, cache_dir: Path) -> Path:
    """The text tower as an fp32 ONNX file, exported on first use and checked against torch on ``tokens``."""
    path = cache_dir / "onnx" / f"{_weights_key(model, tokens.shape[1])}-text-fp32.onnx"
    if not path.is_file():
        _export(model, tokens, path)
    return path


class OnnxTextEncoder:
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"tokens": tokens.astype(np.int64, copy=False)})[0].astype(np.float32)


class OpenVinoTextEncoder:
    def __init__(self, path: Path, threads: int | None, cache_dir: Path) -> None:
        from imgvec.embed.openvino import openvino

        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(cache_dir / "openvino"),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = openvino().Core().compile_model(str(path), "CPU", config)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        # A new request per call: the service's model thread is the only caller, but the CLI's and a test's
        # threads may call at once, and one request is not safe to share.
        request = self._compiled.create_infer_request()
        request.infer({0: tokens.astype(np.int64, copy=False)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)


def choose(
    torch_texts: TextEncoder,
    tokenize: Callable[[Sequence[str]], np.ndarray],
    build: Callable[[str], TextEncoder],
    *,
    model_key: str,
    cache_dir: Path,
    named: str | None = None,
) -> tuple[str, TextEncoder | None]:
    """(runtime, its encoder; None for torch). ``named``: the runtime the user asked for (torch, onnx, openvino),
    used when it agrees with torch; None: the fastest that agrees, measured once per CPU and weights and cached."""
    cache = cache_dir / "text-runtime.json"
    key = f"{model_key} | {cpu_info().signature()} | {probe.versions()}"
    known = probe.read_cache(cache)
    candidates = [named] if named else ["torch", "onnx", "openvino"]
    if named is None and key in known:
        candidates = [known[key]["runtime"]]
    tokens = tokenize(SAMPLE_QUERIES)
    reference = torch_texts(tokens)
    timings: dict[str, float] = {}
    chosen: tuple[str, TextEncoder | None] = ("torch", None)
    for name in candidates:
        if name == "torch":
            encoder: TextEncoder = torch_texts
        else:
            try:
                encoder = build(name)
                agreement = float((encoder(tokens) * reference).sum(axis=1).min())
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot run this tower is not a candidate
                log.warning("text tower on %s: %s; it stays on torch", name, exc)
                continue
            if agreement < TEXT_AGREEMENT:
                log.warning("text tower on %s agrees with torch to %.5f only: not used", name, agreement)
                continue
        if len(candidates) == 1:
            return name, None if name == "torch" else encoder
        timings[name] = _lone_query_seconds(encoder, tokens[:1])
        if timings[name] == min(timings.values()):
            chosen = (name, None if name == "torch" else encoder)
    if named is None and timings:
        probe.write_cache(cache, key, {"runtime": chosen[0], "seconds": {k: round(v, 6) for k, v in timings.items()}})
        measured = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in timings.items())
        log.info("text tower: %s (a lone query: %s)", chosen[0], measured)
    return chosen


def _lone_query_seconds(encoder: TextEncoder, one: np.ndarray) -> float:
    for _ in range(3):
        encoder(one)
    samples = []
    for _ in range(TIMED_CALLS):
        began = time.perf_counter()
        encoder(one)
        samples.append(time.perf_counter() - began)
    return float(np.median(samples))


def _text_tower(model: torch.nn.Module) -> torch.nn.Module:
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens, normalize=True)

    return TextTower().eval()


def _weights_key(model: torch.nn.Module, context: int) -> str:
    import open_clip
    import torch

    digest = hashlib.blake2b(digest_size=16)
    meta = {"torch": torch.__version__, "open_clip": open_clip.__version__, "opset": OPSET, "context": context}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        if not name.startswith("visual."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _export(model: torch.nn.Module, tokens: np.ndarray, path: Path) -> None:
    import onnxruntime as ort
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tower = _text_tower(model)
    probe = torch.from_numpy(tokens.astype(np.int64))
    log.info("exporting the text tower to ONNX: %s", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                tower,
                (probe,),
                str(tmp),
                input_names=["tokens"],
                output_names=["embeddings"],
                dynamic_axes={"tokens": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        with torch.inference_mode():
            expected = tower(probe).numpy()
        actual = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens})[0]
        cosine = float((actual * expected).sum(axis=1).min())
        if cosine < TEXT_AGREEMENT:
            raise ModelLoadError(f"the text tower's ONNX export disagrees with torch (cosine {cosine:.6f})")
        os.replace(tmp, path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot export the text tower to ONNX: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)

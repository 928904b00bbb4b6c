"""The image tower as an ONNX graph run by ONNX Runtime: exported once per weights and cached, optionally
quantised to int8.

The cache key is a digest of the tower's weights themselves (plus the versions that shape the graph), not the
model's name: a checkpoint replaced under the same path, or a local directory re-downloaded, gets a new export
instead of silently running the old weights. Each file is written beside its final name and renamed into place,
so two processes exporting at once both end with one complete file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgvec.embed.runtime import Precision
from imgvec.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_AGREEMENT = 0.9999
"""The fp32 graph must give the torch model's vectors to this cosine on a probe batch, or it is not used."""


class OnnxImageEncoder:
    """(N, 3, H, W) float32 → (N, D) L2-normalised float32, through ONNX Runtime."""

    def __init__(self, fp32: Path, *, precision: Precision, device: str, threads: int | None, vnni: bool) -> None:
        """``fp32``: the exported tower (``exported_tower``). ``vnni``: the CPU multiplies int8 with 32-bit sums,
        so int8 weights may use their full range."""
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ModelLoadError("--runtime onnx needs onnxruntime: pip install onnxruntime") from exc
        self.precision = precision
        path = fp32
        if precision is Precision.INT8:
            path = fp32.with_name(fp32.name.replace("-fp32.onnx", "-int8.onnx" if vnni else "-int8-r7.onnx"))
            if not path.is_file():
                quantize(fp32, path, reduce_range=not vnni)
        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle pool threads would otherwise spin for a while after each batch, taking the core a decode worker
        # needs right then; the batch is long enough that waking them costs nothing measurable.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=_providers(ort, device))
        self._input = self._session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        return self._session.run(None, {self._input: batch})[0].astype(np.float32, copy=False)


def exported_tower(model: torch.nn.Module, image_size: tuple[int, int], cache_dir: Path) -> Path:
    """The image tower as an fp32 ONNX file, exported on first use and checked against torch; ONNX Runtime and
    OpenVINO both start from it."""
    path = cache_dir / "onnx" / f"{_weights_key(model, image_size)}-fp32.onnx"
    if not path.is_file():
        _export(model, image_size, path)
    return path


def _providers(ort: object, device: str) -> list[str]:
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()  # type: ignore[attr-defined]
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            "--runtime onnx on a GPU needs onnxruntime-gpu (pip install onnxruntime-gpu); "
            "or use --runtime torch, which runs fp16 on the GPU"
        )
    index = device.partition(":")[2] or "0"
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # type: ignore[list-item]


def _image_tower(model: torch.nn.Module) -> torch.nn.Module:
    """What the graph computes: the model's image embedding, L2-normalised, exactly like ``encode_image``."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels, normalize=True)

    return ImageTower().eval()


def _weights_key(model: torch.nn.Module, image_size: tuple[int, int]) -> str:
    import open_clip
    import torch

    digest = hashlib.blake2b(digest_size=16)
    meta = {"torch": torch.__version__, "open_clip": open_clip.__version__, "opset": OPSET, "size": image_size}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in model.visual.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _export(model: torch.nn.Module, image_size: tuple[int, int], path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    device = next(model.parameters()).device
    tower = _image_tower(model).to("cpu")
    probe = torch.rand(2, 3, *image_size) * 4 - 2
    log.info("exporting the image tower to ONNX: %s", path)
    try:
        # Not under inference_mode or no_grad: there nn.MultiheadAttention takes its fused fast path, an operator
        # that has no ONNX form.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, once per export
            torch.onnx.export(
                tower,
                (probe,),
                str(tmp),
                input_names=["pixels"],
                output_names=["embeddings"],
                dynamic_axes={"pixels": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        with torch.inference_mode():
            expected = tower(probe).numpy()
        _check_agreement(tmp, probe.numpy(), expected)
        os.replace(tmp, path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot export the image tower to ONNX: {exc}; use --runtime torch") from exc
    finally:
        tmp.unlink(missing_ok=True)
        model.to(device)


def _check_agreement(path: Path, probe: np.ndarray, expected: np.ndarray) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"pixels": probe})[0]
    cosine = float((actual * expected).sum(axis=1).min())
    if cosine < EXPORT_AGREEMENT:
        raise ModelLoadError(
            f"the ONNX export disagrees with torch (cosine {cosine:.6f} < {EXPORT_AGREEMENT}); use --runtime torch"
        )


def quantize(fp32: Path, path: Path, *, reduce_range: bool) -> None:
    """Dynamic quantisation: int8 weights, activations quantised per batch at run time. It needs no calibration
    images, so it works for any model the same way."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
    log.info("quantising the image tower to int8: %s", path)
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)  # its advice to pre-process first is for static quantisation
        # Weights per output channel. Without VNNI the int8 kernels add pairs of products in 16 bits, which
        # saturates with full 8-bit weights (cosine to fp32 fell to 0.98 on ViT-B/32): there 7-bit weights
        # (reduce_range) hold it at 0.9997. With VNNI the sums are 32-bit and full range is closer still.
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
        os.replace(tmp, path)
    except Exception as exc:
        raise ModelLoadError(f"cannot quantise the ONNX image tower to int8: {exc}; use --precision fp32") from exc
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)

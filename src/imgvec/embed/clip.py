"""open_clip models: the one place that knows about torch, devices, weights and their caches."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from imgvec.embed import gpu_probe, probe, text_tower
from imgvec.embed.cpu import cpu_info
from imgvec.embed.hub import require_weights
from imgvec.embed.modelspec import ModelSpec, WeightsKind
from imgvec.embed.onnx import OnnxImageEncoder, exported_tower
from imgvec.embed.openvino import OpenVinoImageEncoder
from imgvec.embed.pixels import Pixels, as_numpy
from imgvec.embed.preprocess import Preprocessor
from imgvec.embed.runtime import Precision, Runtime, RuntimeChoice, choose
from imgvec.errors import ModelLoadError, ModelSpecError
from imgvec.identity import IndexIdentity

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
Tokenizer = Callable[[list[str]], "torch.Tensor"]

RANDOM_SEED = 0
_load_lock = threading.Lock()


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "imgvec"


def register_model_configs(config_dir: str | os.PathLike[str] | None) -> None:
    """Make extra open_clip architectures (JSON configs) loadable by name, e.g. a tiny one for tests."""
    if not config_dir:
        return
    import open_clip

    path = Path(config_dir)
    if not path.is_dir():
        raise ModelSpecError(f"model config directory {path} does not exist")
    open_clip.add_model_config(path)


class ClipEmbedder:
    """A CLIP model loaded through open_clip, producing L2-normalised float32 vectors.

    Images run through torch (fp32 on a CPU, fp16 autocast on a GPU), or through the image tower exported to ONNX
    and run by ONNX Runtime (fp32, int8) or OpenVINO (fp32, bf16); ``--runtime auto`` measures which is fastest
    on this CPU (``embed/probe.py``). Texts run through torch until ``prepare_texts`` has chosen the text tower's
    runtime the same way (``embed/text_tower.py``, fp32 only: a query is one short call). The index identity is the
    model's, whatever runtime wrote the vectors: they agree to the cosines in docs/performance.md.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        runtime: RuntimeChoice | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self._runtime = runtime or choose("cpu")
        self.device = self._runtime.device
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        with _load_lock:
            self._model, self._tokenizer = self._load()
        self._model.eval().to(self.device)
        cfg = _preprocess_cfg(self._model)
        self.preprocessor = Preprocessor.from_open_clip_cfg(cfg)
        self.probe: probe.Probe | None = None
        """The measurements behind an ``auto`` choice on a CPU (None when the runtime was named)."""
        self.gpu_probe: gpu_probe.GpuProbe | None = None
        """The same on a GPU (``embed/gpu_probe.py``)."""
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        """The image tower through ``torch.compile`` (``--runtime torch-compile``), made on first use."""
        self._threads = threads
        self._encode: probe.ImageEncoder | None = None
        self._affine: tuple[torch.Tensor, torch.Tensor] | None = None
        """The normalisation's scale and shift on the model's device (``Preprocessor.affine``)."""
        self._copy_stream: torch.cuda.Stream | None = None
        """On a GPU: the stream host pixels are copied on (``_on_device``)."""
        self._settle_lock = threading.Lock()
        self._texts: text_tower.TextEncoder | None = None
        self.text_runtime: str | None = None
        """The text tower's runtime once ``prepare_texts`` chose it; None: torch, not yet measured."""
        self.identity = IndexIdentity(
            model=spec.text,
            architecture=spec.architecture,
            pretrained=self._weights_identity(),
            dimension=self._output_dimension(),
            normalized=True,
            preprocess=self.preprocessor.as_dict(),
        )
        if spec.is_random:
            warnings.warn(
                f"{spec.text}: random weights; search results will not be meaningful. "
                "Use for offline runs and benchmarks only.",
                RandomWeightsWarning,
                stacklevel=2,
            )

    @property
    def runtime(self) -> RuntimeChoice:
        """Settled on first use, not at load: a text query never measures the image runtimes."""
        self._image_encoder_ready()
        return self._runtime

    def embed_images(self, pixels: Pixels) -> np.ndarray:
        encode = self._image_encoder_ready()
        if self._runtime.runtime in (Runtime.TORCH, Runtime.TORCH_COMPILE):  # normalised on the model's device
            return encode(pixels)
        return encode(self.preprocessor.normalise(as_numpy(pixels)))

    def costs(self) -> probe.Costs | None:
        """Decode and model costs measured on this CPU for this runtime, or None where it never measured them
        (a GPU, or a named runtime that ``--runtime auto`` has not timed here)."""
        runtime = self.runtime
        if self.probe is not None:
            return self.probe.costs()
        if runtime.on_gpu:
            return None
        return probe.measured_costs(runtime, cpu=cpu_info(), model_key=self._model_key(), cache_dir=self._cache_dir)

    def _model_key(self) -> str:
        return f"{self.spec.architecture} {self._weights_identity()}"

    def _image_encoder_ready(self) -> probe.ImageEncoder:
        if self._encode is not None:  # every batch after the first: no lock
            return self._encode
        with self._settle_lock:
            if self._encode is None:
                if not self._runtime.resolved and self._runtime.on_gpu:
                    self._runtime, self.gpu_probe = gpu_probe.settle(
                        self._runtime,
                        model_key=self._model_key(),
                        preprocessor=self.preprocessor,
                        build=self.image_encoder,
                        cache_dir=self._cache_dir,
                    )
                elif not self._runtime.resolved:
                    self._runtime, self.probe = probe.settle(
                        self._runtime,
                        cpu=cpu_info(),
                        model_key=self._model_key(),
                        preprocessor=self.preprocessor,
                        build=lambda engine, precision: self._image_encoder(engine, precision, None),
                        cache_dir=self._cache_dir,
                    )
                self._encode = self._image_encoder(self._runtime.runtime, self._runtime.precision, self._threads)
            return self._encode

    def image_encoder(self, engine: Runtime, precision: Precision) -> probe.ImageEncoder:
        """The image tower through ``engine`` at ``precision``, whatever this run chose: what the probes time."""
        return self._image_encoder(engine, precision, None)

    def image_tower_onnx(self) -> Path:
        """The image tower as an fp32 ONNX file (exported on first use, checked against torch, cached)."""
        with _load_lock:  # one export per process, however many threads load the model at once
            return exported_tower(self._model, self._input_size(), self._cache_dir)

    def _image_encoder(self, engine: Runtime, precision: Precision, threads: int | None) -> probe.ImageEncoder:
        if engine is Runtime.TORCH and precision is self._torch_precision():
            return self.torch_images
        if engine in (Runtime.TORCH, Runtime.TORCH_COMPILE):
            return functools.partial(self._torch_images, precision=precision, compiled=engine is Runtime.TORCH_COMPILE)
        fp32 = self.image_tower_onnx()
        if engine is Runtime.OPENVINO:
            return OpenVinoImageEncoder(fp32, precision=precision, threads=threads, cache_dir=self._cache_dir)
        return OnnxImageEncoder(fp32, precision=precision, device=self.device, threads=threads, vnni=cpu_info().vnni)

    def torch_images(self, pixels: Pixels) -> np.ndarray:
        """Through torch, whatever runtime embeds this model's images: the reference the others are held to
        (at the run's precision on a GPU, fp32 until one is chosen)."""
        compiled = self._runtime.runtime is Runtime.TORCH_COMPILE
        return self._torch_images(pixels, precision=self._torch_precision(), compiled=compiled)

    def _torch_precision(self) -> Precision:
        """What torch runs at in this run: the chosen precision on a GPU; fp32 on a CPU, where torch is the
        reference the other runtimes are held to."""
        on_torch = self._runtime.runtime in (Runtime.TORCH, Runtime.TORCH_COMPILE)
        return self._runtime.precision if self._runtime.on_gpu and on_torch else Precision.FP32

    def _torch_images(self, pixels: Pixels, *, precision: Precision, compiled: bool = False) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = self._on_device(pixels)
            with self._autocast(precision):
                if compiled:
                    features = torch.nn.functional.normalize(self._compiled_tower()(batch), dim=-1)
                else:
                    features = self._model.encode_image(batch, normalize=True)
            return features.float().cpu().numpy()

    def _on_device(self, pixels: Pixels) -> torch.Tensor:
        """The batch on the model's device, uint8 normalised there (one multiply-add). A GPU run's pixels are
        mostly there already: the decode lane's were decoded there, and the CPU workers' were uploaded as each
        file finished, while the previous batch's model call ran (``GpuDecodeLane.upload``). What still comes
        from the host is copied from pinned memory on a stream of its own, the model waiting for that stream."""
        import torch

        if self._affine is None:
            scale, shift = (torch.from_numpy(part).reshape(1, 3, 1, 1) for part in self.preprocessor.affine())
            self._affine = (scale.to(self.device), shift.to(self.device))
        scale, shift = self._affine
        tensor = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pixels))
        if self._runtime.on_gpu and not tensor.is_cuda:
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            copy, compute = self._copy_stream, torch.cuda.current_stream(self.device)
            with torch.cuda.stream(copy):
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            compute.wait_stream(copy)
            tensor.record_stream(compute)
        else:
            tensor = tensor.to(self.device)
        if tensor.dtype == torch.uint8:
            return torch.addcmul(shift, tensor.float(), scale)
        return tensor.float()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return (self._texts or self._torch_texts)(self._tokens(texts))

    def prepare_texts(self) -> str:
        with self._settle_lock:
            if self.text_runtime is None:
                if self._runtime.on_gpu:
                    self.text_runtime = "torch"
                else:
                    named = None if self._runtime.runtime is Runtime.AUTO else self._runtime.runtime.value
                    self.text_runtime, self._texts = text_tower.choose(
                        self._torch_texts,
                        self._tokens,
                        self._text_encoder,
                        model_key=self._model_key(),
                        cache_dir=self._cache_dir,
                        named=named,
                    )
            return self.text_runtime

    def _tokens(self, texts: Sequence[str]) -> np.ndarray:
        return self._tokenizer(list(texts)).numpy()

    def _torch_texts(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast(self._torch_precision()):
            features = self._model.encode_text(torch.from_numpy(tokens).to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def _text_encoder(self, runtime: str) -> text_tower.TextEncoder:
        with _load_lock:
            path = text_tower.exported_text_tower(self._model, self._tokens(text_tower.SAMPLE_QUERIES), self._cache_dir)
        if runtime == "openvino":
            return text_tower.OpenVinoTextEncoder(path, self._threads, self._cache_dir)
        return text_tower.OnnxTextEncoder(path, self._threads)

    def _compiled_tower(self) -> Callable[[torch.Tensor], torch.Tensor]:
        import torch

        if self._compiled is None:
            # dynamic: one compile for every batch size (the probe's three, a run's short last batch), not one each
            self._compiled = torch.compile(self._model.visual, dynamic=True)
        return self._compiled

    def _autocast(self, precision: Precision) -> contextlib.AbstractContextManager[object]:
        """fp16 or bf16 through torch's autocast (a GPU): matrix products in half precision, normalisations kept
        in fp32. On a CPU only where ``gpu_probe``'s own test measures it there."""
        import torch

        device_type = "cuda" if self._runtime.on_gpu else "cpu"
        if precision is Precision.FP16:
            return torch.autocast(device_type=device_type, dtype=torch.float16)
        if precision is Precision.BF16:
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _input_size(self) -> tuple[int, int]:
        size = self.preprocessor.size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    # -- loading ------------------------------------------------------------------------------------

    def _load(self) -> tuple[torch.nn.Module, Tokenizer]:
        import open_clip

        spec = self.spec
        require_weights(spec)  # offline: one line within seconds, not the hub client's minutes of retries
        if spec.weights in (WeightsKind.HF_HUB, WeightsKind.LOCAL_DIR):
            return self._guarded(lambda: open_clip.create_model(spec.architecture)), self._tokenizer_for()
        if spec.architecture not in open_clip.list_models():
            raise ModelSpecError(
                f"unknown architecture {spec.architecture!r} in --model {spec.text!r}; "
                f"known ones include ViT-B-32, ViT-B-16, ViT-L-14 (open_clip.list_models())"
            )
        if spec.weights is WeightsKind.RANDOM:
            checkpoint = self._random_checkpoint()
            model = self._guarded(lambda: open_clip.create_model(spec.architecture, pretrained=str(checkpoint)))
        elif spec.weights is WeightsKind.CHECKPOINT:
            try:
                model = open_clip.create_model(spec.architecture, pretrained=spec.pretrained)
            except Exception as exc:
                raise ModelLoadError(_checkpoint_error(spec.pretrained, spec.architecture, exc)) from exc
        else:
            tag_cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(spec.architecture)
                raise ModelSpecError(
                    f"{spec.architecture} has no pretrained tag {spec.pretrained!r}; known tags: {', '.join(tags)}"
                )
            # The OpenAI weights were trained with QuickGELU; loading them into the plain-GELU architecture
            # only warns in open_clip and yields subtly wrong vectors.
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
            model = self._guarded(
                lambda: open_clip.create_model(
                    spec.architecture, pretrained=spec.pretrained, force_quick_gelu=quick_gelu
                )
            )
        return model, self._tokenizer_for()

    def _tokenizer_for(self) -> Tokenizer:
        import open_clip

        return self._guarded(lambda: open_clip.get_tokenizer(self.spec.architecture))

    def _guarded(self, build: Callable[[], T]) -> T:
        try:
            return build()
        except (ModelSpecError, ModelLoadError):
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load model {self.spec.text!r}: {exc}. "
                "Weights for tags and hf-hub: models come from the Hugging Face hub on first use and are "
                "cached; offline, pre-fetch them (see README 'Model weights') or use "
                f"{self.spec.architecture.split(':')[-1]}/random for a weights-free run."
            ) from exc

    def _random_checkpoint(self) -> Path:
        """Seeded random weights, written once so every process (and every torch version) agrees."""
        import open_clip
        import torch

        path = self._cache_dir / "random" / f"{self.spec.architecture}-seed{RANDOM_SEED}.pt"
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(RANDOM_SEED)
        model = open_clip.create_model(self.spec.architecture, pretrained=None)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: concurrent first runs both end with one complete file
        return path

    def _weights_identity(self) -> str:
        if self.spec.weights is WeightsKind.CHECKPOINT:
            return f"checkpoint:sha256:{_sha256(Path(self.spec.pretrained))[:16]}"
        return self.spec.pretrained

    def _output_dimension(self) -> int:
        import torch

        height, width = self._input_size()
        with torch.inference_mode():
            probe = torch.zeros(1, 3, height, width, device=self.device)
            return int(self._model.encode_image(probe).shape[-1])


class RandomWeightsWarning(UserWarning):
    """Emitted whenever a model with random weights is loaded, so it is never mistaken for a real one."""


def _preprocess_cfg(model: torch.nn.Module) -> dict:
    from open_clip.model import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


def _checkpoint_error(path: str, architecture: str, exc: Exception) -> str:
    """What is wrong with a local checkpoint, in words: torch's own errors are a bare unpickling number, or a
    list of hundreds of state-dict keys."""
    text = str(exc)
    expected = f"expected a torch.save() file holding the weights of an open_clip {architecture} model"
    missing = re.search(r"Missing key\(s\) in state_dict: (.*?)\.\s*(?:Unexpected|$)", text, re.DOTALL)
    unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*?)\.\s*$", text, re.DOTALL)
    if missing or unexpected or "size mismatch" in text:
        parts = []
        for label, found in (("missing", missing), ("unexpected", unexpected)):
            if found:
                keys = re.findall(r'"([^"]+)"', found.group(1))
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:2])})")
        if "size mismatch" in text:
            parts.append("tensors of other shapes")
        return f"checkpoint {path} is not for {architecture}: {'; '.join(parts)}; {expected}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read checkpoint {path}: {exc.strerror}"
    return f"{path} is not a PyTorch checkpoint (torch.load: {type(exc).__name__}); {expected}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""A model bundle: the image tower exported to ONNX with what it takes to use it, loadable without torch.

A Lambda pays for every import on each cold start, and torch with open_clip is seconds of it and most of a
package's size. The bundle is written once where torch is installed (``imgvec export-model``, the Lambda
packaging script): the fp32 graph (checked against torch when exported), optionally its int8 forms (quantised
there, since the function's code folder is read-only), the index identity, the preprocessing, and the cosine each
runtime measured against torch fp32 on the probe batch. ``BundleEmbedder`` reads it with ONNX Runtime or OpenVINO
and embeds images exactly as ``ClipEmbedder`` does on the same runtime; text queries are not its job.

The runtime: named by the caller (``IMGVEC_RUNTIME``/``IMGVEC_PRECISION`` in the Lambda), else the one the probe
chose where the bundle was written, if this CPU has the instructions it needs and it is in the bundle, else ONNX
Runtime fp32. Measuring every candidate on each cold start would cost more than it could save there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgvec.embed.cpu import CpuInfo, cpu_info
from imgvec.embed.preprocess import Preprocessor
from imgvec.embed.runtime import Precision, Runtime, RuntimeChoice
from imgvec.errors import ModelLoadError, UsageError
from imgvec.identity import IndexIdentity

if TYPE_CHECKING:
    from imgvec.embed.clip import ClipEmbedder
    from imgvec.embed.probe import ImageEncoder

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"
FORMAT = 1
FP32_FILE = "image-fp32.onnx"
INT8_FILES = {True: "image-int8.onnx", False: "image-int8-r7.onnx"}
"""ONNX Runtime's int8 graph for a CPU with VNNI (full-range weights) and without (7-bit weights); the names are
the ones ``OnnxImageEncoder`` derives from the fp32 file's."""
PROBE_IMAGES = 8


@dataclass(frozen=True, slots=True)
class Bundle:
    folder: Path
    identity: IndexIdentity
    preprocessor: Preprocessor
    files: tuple[str, ...]
    agreement: dict[str, float]
    """``"onnx fp32"`` → the minimum cosine to torch fp32 on the probe batch, measured when the bundle was written."""
    chosen: tuple[Runtime, Precision]
    """What the probe chose where the bundle was written (torch mapped to ONNX fp32: torch is not in a bundle)."""
    chosen_on: str

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> Bundle:
        path = Path(folder)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            hint = "`imgvec export-model` writes one"
            raise ModelLoadError(f"no model bundle at {path} ({MANIFEST} missing): {hint}") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the model bundle at {path}: {exc}") from None
        if manifest.get("format") != FORMAT:
            found = manifest.get("format")
            raise ModelLoadError(f"model bundle {path} has format {found!r}; this imgvec reads {FORMAT}")
        files = tuple(manifest["files"])
        missing = [name for name in files if not (path / name).is_file()]
        if missing:
            raise ModelLoadError(f"model bundle {path} is incomplete: {', '.join(missing)} missing")
        runtime, precision = manifest["chosen"]
        return cls(
            path,
            IndexIdentity.from_json(json.dumps(manifest["identity"])),
            Preprocessor.from_open_clip_cfg(manifest["identity"]["preprocess"]),
            files,
            {key: float(value) for key, value in manifest["agreement"].items()},
            (Runtime(runtime), Precision(precision)),
            str(manifest.get("chosen_on", "")),
        )

    def has(self, runtime: Runtime, precision: Precision, cpu: CpuInfo) -> bool:
        """The bundle can run this here: its file is in the bundle and it agreed with torch when written."""
        if f"{runtime.value} {precision.value}" not in self.agreement:
            return False
        if precision is Precision.INT8:
            return INT8_FILES[cpu.vnni] in self.files
        return FP32_FILE in self.files and (precision is not Precision.BF16 or cpu.bf16)


class BundleEmbedder:
    """The ``Embedder`` of a bundle: images only, on ONNX Runtime or OpenVINO, torch never imported."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        runtime: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """``cache_dir``: where OpenVINO keeps its compiled graph (the bundle's folder may be read-only)."""
        self.bundle = Bundle.read(folder)
        self.identity = self.bundle.identity
        self.preprocessor = self.bundle.preprocessor
        self.runtime = self._choose(runtime, precision, cpu_info())
        self._encode = self._encoder(threads, Path(cache_dir) if cache_dir else Path("/tmp/imgvec"))

    def _choose(self, runtime: str, precision: str, cpu: CpuInfo) -> RuntimeChoice:
        try:
            engine = Runtime((runtime or "auto").strip().lower())
            wanted = Precision((precision or "auto").strip().lower())
        except ValueError as exc:
            raise UsageError(f"model bundle: {exc}; runtimes: auto, onnx, openvino") from None
        bundle = self.bundle
        if engine is Runtime.TORCH:
            raise UsageError("a model bundle runs on onnx or openvino, not torch")
        if engine is Runtime.AUTO and wanted is Precision.AUTO:
            engine, wanted = bundle.chosen
            if bundle.has(engine, wanted, cpu):
                reason = f"chosen by the probe on {bundle.chosen_on or 'the machine that wrote the bundle'}"
                return RuntimeChoice("cpu", engine, wanted, reason)
            fallback = Precision.FP32 if FP32_FILE in bundle.files else Precision.INT8
            reason = f"{bundle.chosen[0].value} {bundle.chosen[1].value} (the probe's choice) cannot run here"
            return RuntimeChoice("cpu", Runtime.ONNX, fallback, reason)
        if engine is Runtime.AUTO:
            engine = {Precision.INT8: Runtime.ONNX, Precision.BF16: Runtime.OPENVINO}.get(wanted, Runtime.ONNX)
        if wanted is Precision.AUTO:
            wanted = Precision.FP32
        if not bundle.has(engine, wanted, cpu):
            held = ", ".join(sorted(bundle.agreement))
            raise ModelLoadError(
                f"the model bundle cannot run {engine.value} {wanted.value} on this CPU ({cpu.describe()}); "
                f"it holds: {held}"
            )
        return RuntimeChoice("cpu", engine, wanted, "asked for by name")

    def _encoder(self, threads: int | None, cache_dir: Path) -> ImageEncoder:
        fp32 = self.bundle.folder / FP32_FILE
        choice = self.runtime
        if choice.runtime is Runtime.OPENVINO:
            from imgvec.embed.openvino import OpenVinoImageEncoder

            return OpenVinoImageEncoder(fp32, precision=choice.precision, threads=threads, cache_dir=cache_dir)
        from imgvec.embed.onnx import OnnxImageEncoder

        # The int8 file's name is derived from the fp32 one's, which need not itself be in the bundle.
        return OnnxImageEncoder(fp32, precision=choice.precision, device="cpu", threads=threads, vnni=cpu_info().vnni)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._encode(self.preprocessor.normalise(pixels))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise UsageError("a model bundle holds the image tower only: text queries need the full model")

    def prepare_texts(self) -> str:
        return "none"


def export_bundle(embedder: ClipEmbedder, folder: Path, *, fp32: bool = True, int8: bool = True) -> dict[str, Any]:
    """Write ``embedder``'s bundle into ``folder`` (made if missing). ``fp32=False`` keeps only the int8 graphs, a
    quarter of the size (a Lambda zip must fit in 250 MB unzipped). Returns the manifest."""
    from imgvec.embed.onnx import OnnxImageEncoder, quantize
    from imgvec.embed.openvino import OpenVinoImageEncoder
    from imgvec.embed.probe import MIN_COSINE, probe_pixels

    if not (fp32 or int8):
        raise UsageError("a bundle needs at least one graph: fp32 or int8")
    folder.mkdir(parents=True, exist_ok=True)
    source = embedder.image_tower_onnx()
    target = folder / FP32_FILE
    shutil.copyfile(source, target)
    files = [FP32_FILE]
    if int8:
        for vnni, name in INT8_FILES.items():
            quantize(target, folder / name, reduce_range=not vnni)
            files.append(name)
    pixels = probe_pixels(embedder.preprocessor, PROBE_IMAGES)
    expected = embedder.torch_images(pixels)
    cpu = cpu_info()
    candidates: list[tuple[Runtime, Precision]] = [(Runtime.ONNX, Precision.FP32), (Runtime.OPENVINO, Precision.FP32)]
    if cpu.bf16:
        candidates.append((Runtime.OPENVINO, Precision.BF16))
    if int8:
        candidates.append((Runtime.ONNX, Precision.INT8))
    agreement: dict[str, float] = {}
    scratch = folder / ".openvino-cache"
    for runtime, precision in candidates:
        if runtime is Runtime.OPENVINO:
            encode: ImageEncoder = OpenVinoImageEncoder(target, precision=precision, threads=None, cache_dir=scratch)
        else:
            encode = OnnxImageEncoder(target, precision=precision, device="cpu", threads=None, vnni=cpu.vnni)
        cosine = float((encode(pixels) * expected).sum(axis=1).min())
        log.info("bundle: %s %s agrees with torch fp32 to %.6f", runtime.value, precision.value, cosine)
        if cosine >= MIN_COSINE:
            agreement[f"{runtime.value} {precision.value}"] = round(cosine, 6)
    shutil.rmtree(scratch, ignore_errors=True)
    if "onnx fp32" not in agreement:
        raise ModelLoadError("the exported image tower disagrees with torch fp32: no bundle written")
    if not fp32:
        target.unlink()
        files.remove(FP32_FILE)
        agreement = {key: value for key, value in agreement.items() if key.endswith("int8")}
    chosen = embedder.runtime
    pair = (chosen.runtime, chosen.precision)
    if chosen.runtime is Runtime.TORCH or f"{pair[0].value} {pair[1].value}" not in agreement:
        pair = (Runtime.ONNX, Precision.FP32) if fp32 else (Runtime.ONNX, Precision.INT8)
    manifest = {
        "format": FORMAT,
        "identity": json.loads(embedder.identity.to_json()),
        "files": files,
        "agreement": agreement,
        "chosen": [pair[0].value, pair[1].value],
        "chosen_on": cpu.describe(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest

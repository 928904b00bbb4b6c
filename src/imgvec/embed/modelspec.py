"""Parse ``--model`` strings: what the user names, and where its weights come from.

Forms (all open_clip architectures):
- ``ViT-B-32/openai``                 an architecture and a pretrained tag, fetched once into the HF cache;
- ``ViT-B-32/random``                 seeded random weights, identical in every process, for offline runs;
- ``ViT-B-32//data/clip/model.pt``    an architecture and a local checkpoint file (path after the first '/');
- ``hf-hub:ORG/REPO``                 a model repo on the Hugging Face hub (config and weights);
- ``local-dir:/path/to/dir``          a downloaded hub repo on disk (open_clip_config.json + weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from imgvec.errors import ModelSpecError

DEFAULT_MODEL = "ViT-B-32/openai"


class WeightsKind(StrEnum):
    TAG = "tag"
    RANDOM = "random"
    CHECKPOINT = "checkpoint"
    HF_HUB = "hf-hub"
    LOCAL_DIR = "local-dir"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    text: str
    architecture: str
    weights: WeightsKind
    pretrained: str
    """The tag, 'random', the checkpoint path, or the hub / directory identifier."""

    @property
    def is_random(self) -> bool:
        return self.weights is WeightsKind.RANDOM


def parse_model_spec(text: str) -> ModelSpec:
    text = text.strip()
    if not text:
        raise ModelSpecError("empty --model; try ViT-B-32/openai")
    for prefix, kind in (("hf-hub:", WeightsKind.HF_HUB), ("local-dir:", WeightsKind.LOCAL_DIR)):
        if text.startswith(prefix):
            ident = text[len(prefix) :]
            if not ident:
                raise ModelSpecError(f"--model {text!r} names no {kind.value} repository")
            if kind is WeightsKind.LOCAL_DIR and not Path(ident).expanduser().is_dir():
                raise ModelSpecError(f"--model {text!r}: directory {ident} does not exist")
            return ModelSpec(text, text, kind, text)

    architecture, sep, pretrained = text.partition("/")
    if not sep or not pretrained:
        raise ModelSpecError(
            f"--model {text!r} names an architecture but no weights; write {architecture}/openai "
            f"(or another pretrained tag), {architecture}/random, or {architecture}//path/to/checkpoint.pt"
        )
    if pretrained == "random":
        return ModelSpec(text, architecture, WeightsKind.RANDOM, "random")
    if pretrained.startswith(("/", "./", "../", "~")) or os.sep in pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelSpecError(f"--model {text!r}: checkpoint file {path} does not exist")
        return ModelSpec(text, architecture, WeightsKind.CHECKPOINT, str(path.resolve()))
    return ModelSpec(text, architecture, WeightsKind.TAG, pretrained)

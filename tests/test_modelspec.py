from __future__ import annotations

from pathlib import Path

import pytest

from imgvec.embed.modelspec import WeightsKind, parse_model_spec
from imgvec.errors import ModelSpecError


@pytest.mark.parametrize(
    ("text", "architecture", "kind", "pretrained"),
    [
        ("ViT-B-32/openai", "ViT-B-32", WeightsKind.TAG, "openai"),
        ("ViT-B-32/laion2b_s34b_b79k", "ViT-B-32", WeightsKind.TAG, "laion2b_s34b_b79k"),
        ("ViT-B-32/random", "ViT-B-32", WeightsKind.RANDOM, "random"),
        (
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            WeightsKind.HF_HUB,
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ),
    ],
)
def test_forms(text: str, architecture: str, kind: WeightsKind, pretrained: str) -> None:
    spec = parse_model_spec(text)
    assert (spec.architecture, spec.weights, spec.pretrained) == (architecture, kind, pretrained)


def test_checkpoint_path(tmp_path: Path) -> None:
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"x")
    spec = parse_model_spec(f"ViT-B-32/{checkpoint}")
    assert spec.weights is WeightsKind.CHECKPOINT and spec.pretrained == str(checkpoint)


def test_local_dir(tmp_path: Path) -> None:
    assert parse_model_spec(f"local-dir:{tmp_path}").weights is WeightsKind.LOCAL_DIR


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ViT-B-32", "names an architecture but no weights"),
        ("", "empty --model"),
        ("ViT-B-32//nowhere/clip.pt", "does not exist"),
        ("local-dir:/nowhere/at/all", "does not exist"),
        ("hf-hub:", "names no hf-hub repository"),
    ],
)
def test_bad_specs_explain_themselves(text: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        parse_model_spec(text)

"""Real open_clip models with random weights: shapes, normalisation, identity, determinism across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgvec import wiring
from imgvec.embed.clip import RandomWeightsWarning
from imgvec.errors import ModelLoadError, ModelSpecError
from imgvec.settings import Settings
from tests.helpers import photo


def _pixels(embedder, seeds: range) -> np.ndarray:
    return np.stack([embedder.preprocessor(photo(s)) for s in seeds])


def test_image_and_text_vectors_are_normalised_512(tiny_embedder) -> None:
    images = tiny_embedder.embed_images(_pixels(tiny_embedder, range(3)))
    texts = tiny_embedder.embed_texts(["a red car", "a dog on a beach"])
    assert images.shape == (3, 512) and texts.shape == (2, 512)
    assert images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images[0], images[1])  # different pictures, different vectors


def test_identity_records_model_and_preprocessing(tiny_embedder) -> None:
    identity = tiny_embedder.identity
    assert identity.model == "imgvec-tiny/random"
    assert (identity.architecture, identity.pretrained, identity.dimension) == ("imgvec-tiny", "random", 512)
    assert identity.random_weights and identity.normalized
    assert identity.preprocess["size"] == 224 and identity.preprocess["interpolation"] == "bicubic"


def test_batching_does_not_change_vectors(tiny_embedder) -> None:
    pixels = _pixels(tiny_embedder, range(4))
    together = tiny_embedder.embed_images(pixels)
    alone = np.concatenate([tiny_embedder.embed_images(pixels[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_random_weights_are_identical_in_another_process(tiny_embedder, settings: Settings) -> None:
    ours = tiny_embedder.embed_texts(["identical everywhere"])[0]
    code = (
        "import sys, numpy as np; from imgvec import wiring; from imgvec.settings import Settings; "
        f"s = Settings(cache_dir={str(settings.cache_dir)!r}, model_config_dir={settings.model_config_dir!r}); "
        "v = wiring.load_embedder(s, 'imgvec-tiny/random').embed_texts(['identical everywhere'])[0]; "
        "sys.stdout.write(' '.join(f'{x:.7f}' for x in v))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    theirs = np.array([float(x) for x in result.stdout.split()], dtype=np.float32)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_checkpoint_file_loads_same_weights(tiny_embedder, settings: Settings) -> None:
    checkpoint = Path(settings.cache_dir) / "random" / "imgvec-tiny-seed0.pt"
    assert checkpoint.is_file()
    with _no_random_warning():
        from_file = wiring.load_embedder(settings, f"imgvec-tiny/{checkpoint}")
    assert from_file.identity.pretrained.startswith("checkpoint:sha256:")
    pixels = _pixels(tiny_embedder, range(2))
    np.testing.assert_allclose(from_file.embed_images(pixels), tiny_embedder.embed_images(pixels), atol=1e-6)


class _no_random_warning:
    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", RandomWeightsWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


def test_unknown_architecture_and_tag_are_clear(settings: Settings) -> None:
    with pytest.raises(ModelSpecError, match="unknown architecture 'ViT-Q-99'"):
        wiring.load_embedder(settings, "ViT-Q-99/openai")
    with pytest.raises(ModelSpecError, match=r"no pretrained tag 'nonsense'.*openai"):
        wiring.load_embedder(settings, "ViT-B-32/nonsense")


def test_missing_weights_offline_give_one_clear_error(settings: Settings, tmp_path: Path) -> None:
    code = (
        "from imgvec import wiring\nfrom imgvec.settings import Settings\n"
        "from imgvec.errors import ModelLoadError\n"
        "try:\n"
        "    wiring.load_embedder(Settings(), 'ViT-B-32/openai')\n"
        "except ModelLoadError as e:\n"
        "    print('ModelLoadError:', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ModelLoadError: the weights of ViT-B-32/openai are not in the local" in result.stdout, result.stderr
    assert "ViT-B-32/random" in result.stdout
    assert ModelLoadError  # the type the CLI turns into one line


@pytest.mark.slow
def test_full_vit_b_32_architecture_loads(settings: Settings) -> None:
    with pytest.warns(RandomWeightsWarning):
        embedder = wiring.load_embedder(settings, "ViT-B-32/random")
    assert embedder.identity.dimension == 512
    assert embedder.preprocessor.size == 224
    vectors = embedder.embed_images(_pixels(embedder, range(2)))
    assert vectors.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

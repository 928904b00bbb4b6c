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


def test_a_lone_request_does_not_wait_for_company_but_a_crowd_shares_a_call(tiny_embedder) -> None:
    """The service's batcher: with a long wait for company, a lone text query still answers at once (its batch
    waited for nobody), and requests queued together run as one model call."""
    import threading
    import time

    from imgvec.service.batching import ModelBatcher

    sizes: list[int] = []
    batcher = ModelBatcher(tiny_embedder, max_wait=5.0, max_batch=4, on_batch=lambda kind, size, _: sizes.append(size))
    try:
        batcher.embed_text("warm up")
        started = time.monotonic()
        vector = batcher.embed_text("a lone query")
        assert time.monotonic() - started < 2.5, "a lone request waited for a batch"
        assert np.allclose(vector, tiny_embedder.embed_texts(["a lone query"])[0], atol=1e-5)
        crowd = [threading.Thread(target=batcher.embed_text, args=(f"query {n}",)) for n in range(8)]
        for thread in crowd:
            thread.start()
        for thread in crowd:
            thread.join()
        assert sizes[:2] == [1, 1] and sum(sizes[2:]) == 8 and len(sizes[2:]) < 8  # full batches leave at once
    finally:
        batcher.close()


def test_the_text_tower_runs_where_a_lone_query_is_fastest_and_agrees_with_torch(settings, tmp_path) -> None:
    """``prepare_texts`` exports the text tower, times a lone query on torch, ONNX Runtime and OpenVINO, keeps the
    fastest that agrees with torch fp32, and remembers the choice; a named runtime is used as named."""
    import json
    from dataclasses import replace

    texts = ["a dog on a beach", "red car in the snow at night", "x"]
    own = replace(settings, cache_dir=tmp_path / "cache", runtime="auto")
    embedder = wiring.load_embedder(own, "imgvec-tiny/random")
    reference = embedder.embed_texts(texts)  # torch, until prepared
    chosen = embedder.prepare_texts()
    assert chosen in {"torch", "onnx", "openvino"} and embedder.prepare_texts() == chosen
    assert float((embedder.embed_texts(texts) * reference).sum(axis=1).min()) >= 0.999
    (entry,) = json.loads((tmp_path / "cache" / "text-runtime.json").read_text()).values()
    assert entry["runtime"] == chosen and set(entry["seconds"]) == {"torch", "onnx", "openvino"}
    assert min(entry["seconds"], key=entry["seconds"].get) == chosen

    again = wiring.load_embedder(own, "imgvec-tiny/random")  # another process: the cached choice, not measured
    assert again.prepare_texts() == chosen
    for runtime in ("onnx", "openvino", "torch"):
        named = wiring.load_embedder(replace(own, runtime=runtime), "imgvec-tiny/random")
        assert named.prepare_texts() == runtime
        assert float((named.embed_texts(texts) * reference).sum(axis=1).min()) >= 0.999


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

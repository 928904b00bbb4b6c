"""Our PIL+numpy preprocessing must produce the tensor open_clip's own transform produces."""

from __future__ import annotations

import numpy as np
import pytest
from open_clip.transform import image_transform
from PIL import Image

from imgvec.embed.decode import decode_image
from imgvec.embed.preprocess import Preprocessor
from tests.helpers import encode, photo

SIZES = [(320, 240), (240, 320), (224, 224), (1000, 225), (225, 1000), (10, 7), (4000, 3000), (301, 299)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_fast_path_equals_open_clip_reference(size: tuple[int, int], interpolation: str) -> None:
    image = photo(sum(size), size)
    ours = Preprocessor(interpolation=interpolation)
    reference = image_transform(224, is_train=False, interpolation=interpolation)
    assert ours.fast_path
    expected = reference(image).numpy()
    actual = ours(image)
    assert actual.shape == expected.shape == (3, 224, 224)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_decoded_jpeg_matches_reference_pipeline() -> None:
    data = encode(photo(11, (640, 427)), quality=90)
    import io

    reference_input = Image.open(io.BytesIO(data)).convert("RGB")
    expected = image_transform(224, is_train=False)(reference_input).numpy()
    np.testing.assert_allclose(Preprocessor()(decode_image(data)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["squash", "longest"])
def test_other_resize_modes_use_the_reference_itself(mode: str) -> None:
    image = photo(12, (300, 200))
    ours = Preprocessor(resize_mode=mode)
    assert not ours.fast_path
    expected = image_transform(224, is_train=False, resize_mode=mode)(image).numpy()
    np.testing.assert_allclose(ours(image), expected, rtol=0, atol=1e-6)


def test_from_open_clip_cfg_reads_model_settings() -> None:
    cfg = {"size": (256, 256), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    pre = Preprocessor.from_open_clip_cfg(cfg)
    assert pre.size == 256 and pre.mean == (0.5, 0.5, 0.5) and pre.interpolation == "bilinear"
    assert pre.as_dict()["size"] == 256

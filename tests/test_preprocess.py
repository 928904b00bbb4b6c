"""Our PIL+numpy preprocessing must produce the tensor open_clip's own transform produces."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from open_clip.transform import image_transform
from PIL import Image

from imgvec.embed.decode import decode_image
from imgvec.embed.preprocess import OPENAI_STD, Preprocessor
from tests.helpers import encode, photo

SIZES = [(320, 240), (240, 320), (224, 224), (1000, 250), (250, 1000), (10, 7), (4000, 3000), (301, 299)]
EXTREME = [(1000, 225), (225, 1000), (5000, 100), (40, 4000)]
"""Over 4:1, only the cropped region is resized (``CROP_FIRST_AREA``)."""
LEVELS = 3 / 255 / min(OPENAI_STD)
"""Three steps of 8-bit rounding, in normalised units."""


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


@pytest.mark.parametrize("size", EXTREME, ids=[f"{w}x{h}" for w, h in EXTREME])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_extreme_aspect_ratios_stay_within_rounding_of_the_reference(size: tuple[int, int], interpolation: str) -> None:
    image = photo(sum(size), size)
    expected = image_transform(224, is_train=False, interpolation=interpolation)(image).numpy()
    actual = Preprocessor(interpolation=interpolation)(image)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=LEVELS)
    assert np.mean(np.abs(actual - expected) > 1e-5) < 0.01  # a few pixels, not a shifted picture


@pytest.mark.parametrize("size", [(1, 100_000), (59_530, 1)], ids=["1x100000", "59530x1"])
def test_extreme_aspect_ratio_costs_memory_of_the_output_not_of_the_resize(size: tuple[int, int]) -> None:
    """The whole-picture resize of 1x100000 would be 224x22400000 (15 GB); measured in a fresh process."""
    code = (
        "import re; from PIL import Image; from imgvec.embed.preprocess import Preprocessor; "
        f"out = Preprocessor()(Image.new('RGB', {size}, (200, 30, 60))); "
        "status = open('/proc/self/status').read(); "  # VmHWM: this process's own peak (ru_maxrss counts the parent's)
        "print(out.shape, int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) // 1024)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    shape, peak_mib = result.stdout.rsplit(" ", 1)
    assert shape == "(3, 224, 224)"
    assert int(peak_mib) < 300, f"peak RSS {peak_mib} MiB"


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

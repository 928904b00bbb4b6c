"""A reduced decode (JPEG DCT scaling, box reduction for other formats) stays within the stated tolerance of the
reference preprocessing: full decode, then open_clip's resize and crop.

The tolerance, in the model's normalised input units (one unit is about 0.27 of the pixel range, 70 levels of 255):
every value within 0.2, 99 % of them within 0.06, the mean within 0.01, and the tiny CLIP's embeddings at
cosine >= 0.999. The largest single differences sit on sharp edges. docs/performance.md quotes this.
"""

from __future__ import annotations

import functools
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from imgvec.embed.decode import decode_image
from imgvec.embed.preprocess import Preprocessor
from tests.helpers import encode, textured_photo

MAX_ABS = 0.2
P99_ABS = 0.06
MEAN_ABS = 0.01
MIN_COSINE = 0.999

pre = Preprocessor()


def reference(data: bytes) -> np.ndarray:
    return pre(decode_image(data))


def reduced(data: bytes) -> np.ndarray:
    return pre(decode_image(data, reduce_for=pre.reduce_for))


CASES = {
    "12MP-jpeg": lambda: encode(textured_photo(1, (4000, 3000)), quality=90),
    "portrait-12MP-jpeg": lambda: encode(textured_photo(2, (3000, 4000)), quality=85),
    "1080p-jpeg": lambda: encode(textured_photo(3, (1920, 1080)), quality=92),
    "progressive-jpeg": lambda: encode(textured_photo(4, (2400, 1600)), quality=90, progressive=True),
    # 4:2:2, as many cameras write: decoded one DCT scale larger (these two were 0.54 and 0.38 off at the usual one)
    "camera-4:2:2-jpeg": lambda: encode(textured_photo(5, (2400, 1800)), quality=90, subsampling="4:2:2"),
    "1080p-4:2:2-jpeg": lambda: encode(textured_photo(5, (1920, 1080)), quality=90, subsampling="4:2:2"),
    "greyscale-jpeg": lambda: encode(textured_photo(5, (2000, 1500)).convert("L"), quality=90),
    "cmyk-jpeg": lambda: encode(textured_photo(6, (2000, 1500)).convert("CMYK"), quality=90),
    "camera-mpo": lambda: encode(
        textured_photo(12, (4000, 3000)), "MPO", save_all=True, append_images=[textured_photo(13, (640, 480))]
    ),
    "large-png": lambda: encode(textured_photo(7, (3000, 2000)), "PNG", compress_level=1),
    "large-webp": lambda: encode(textured_photo(8, (2048, 1536)), "WEBP", quality=90),
}


@functools.cache
def encoded(case: str) -> bytes:
    return CASES[case]()


@pytest.mark.parametrize("case", list(CASES))
def test_reduced_decode_is_within_tolerance(case: str) -> None:
    data = encoded(case)
    difference = np.abs(reduced(data) - reference(data))
    assert difference.max() <= MAX_ABS, f"{case}: max {difference.max():.4f}"
    assert np.quantile(difference, 0.99) <= P99_ABS, f"{case}: p99 {np.quantile(difference, 0.99):.4f}"
    assert difference.mean() <= MEAN_ABS, f"{case}: mean {difference.mean():.5f}"


def test_reduced_decode_embeds_like_the_reference(tiny_embedder) -> None:
    datas = [encoded(case) for case in CASES]
    full = tiny_embedder.embed_images(np.stack([reference(d) for d in datas]))
    fast = tiny_embedder.embed_images(np.stack([reduced(d) for d in datas]))
    assert (full * fast).sum(axis=1).min() >= MIN_COSINE


def test_a_12mp_jpeg_is_never_decoded_in_full() -> None:
    data = encode(textured_photo(1, (4000, 3000)), quality=90)
    image = decode_image(data, reduce_for=224)
    assert image.size == (1000, 750)  # libjpeg's 1/4 scale: the smallest that keeps >= 2 x 224 on the short side
    assert min(Image.open(io.BytesIO(data)).size) == 3000


def test_exif_rotation_survives_a_reduced_decode() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(textured_photo(9, (4000, 3000)), quality=90, exif=exif.tobytes())
    assert decode_image(data, reduce_for=224).size == (750, 1000)
    difference = np.abs(reduced(data) - reference(data))
    assert difference.max() <= MAX_ABS


def test_a_multi_picture_jpeg_takes_the_dct_path() -> None:
    image = Image.open(io.BytesIO(encoded("camera-mpo")))
    assert image.format == "MPO"
    image.draft(None, (1000, 750))  # what decode_image asks of a JPEG; an MPO honours it too
    assert image.size == (1000, 750)


def test_small_images_are_left_exactly_as_decoded() -> None:
    data = encode(textured_photo(10, (640, 480)), quality=90)
    np.testing.assert_array_equal(reduced(data), reference(data))


def test_a_truncated_jpeg_still_fails_with_its_reason() -> None:
    data = encode(textured_photo(11, (2000, 1500)), quality=90)
    from imgvec.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], reduce_for=224)


def test_ingest_decodes_reduced_unless_told_otherwise(tmp_path, cli_env) -> None:
    import json

    from imgvec.stores.embedded import EmbeddedStore
    from tests.helpers import run_cli

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "big.jpg").write_bytes(encoded("12MP-jpeg"))
    vectors = {}
    for name, flags in (("reduced", []), ("full", ["--full-decode"])):
        store = tmp_path / name
        args = ["--store", str(store), "--model", "imgvec-tiny/random", "ingest", str(folder), "--json", *flags]
        result = run_cli(args, cli_env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["embedded"] == 1
        content_hash = hashlib.sha256(encoded("12MP-jpeg")).hexdigest()
        vectors[name] = EmbeddedStore(store, "images").vectors_by_hash([content_hash])[content_hash]
    cosine = float(vectors["reduced"] @ vectors["full"])
    assert MIN_COSINE <= cosine < 1.0  # close, and really the other path


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_a_usage_error(tmp_path, cli_env) -> None:
    from tests.helpers import run_cli

    result = run_cli(["--device", "cuda", "ingest", str(tmp_path)], cli_env)
    assert result.returncode == 2
    assert "sees no CUDA GPU" in result.stderr

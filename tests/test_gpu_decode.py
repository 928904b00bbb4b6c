"""The GPU decode lane's decoding (``embed/gpu_decode.py``), run on CPU tensors: the same torch code as on a GPU,
with torchvision's libjpeg-turbo in place of nvJPEG. It is held to the tolerance the CPU's reduced decode is held
to (``tests/test_decode_reduced.py``) against the reference (full decode, open_clip's resize and crop); the files
it must leave to the CPU are refused from their header; EXIF orientation is applied as Pillow applies it."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from imgvec.embed.decode import decode_image, open_image
from imgvec.embed.gpu_decode import decode_batch, refusal, turn_upright
from imgvec.embed.perceptual import hamming, phash, phash_of_grey
from imgvec.embed.picture import Header
from imgvec.embed.preprocess import Preprocessor
from tests.helpers import encode, exif_photo, textured_photo
from tests.test_decode_reduced import MAX_ABS, MEAN_ABS, MIN_COSINE, P99_ABS

pre = Preprocessor()

LANE_CASES = {
    "12MP-jpeg": lambda: encode(textured_photo(1, (4000, 3000)), quality=90),
    "1080p-jpeg-4:4:4": lambda: encode(textured_photo(3, (1920, 1080)), quality=92, subsampling="4:4:4"),
    "4:2:2-jpeg": lambda: encode(textured_photo(9, (1600, 1200)), quality=90, subsampling="4:2:2"),
    "progressive-jpeg": lambda: encode(textured_photo(4, (2400, 1600)), quality=90, progressive=True),
    "greyscale-jpeg": lambda: encode(textured_photo(5, (2000, 1500)).convert("L"), quality=90),
    "0.3MP-jpeg": lambda: encode(textured_photo(10, (640, 480)), quality=85),
    "small-upscaled-jpeg": lambda: encode(textured_photo(11, (200, 150)), quality=85),
    "3:1-jpeg": lambda: encode(textured_photo(14, (3000, 1000)), quality=90),
}


def _patched(data: bytes, at_marker: bytes, offset: int, value: bytes) -> bytes:
    at = data.index(at_marker) + offset
    return data[:at] + value + data[at + len(value) :]


def _small_jpeg() -> bytes:
    return encode(textured_photo(20, (640, 480)), quality=90, subsampling="4:4:4")


CPU_CASES = {
    "cmyk-jpeg": (lambda: encode(textured_photo(6, (800, 600)).convert("CMYK"), quality=90), "CMYK JPEG"),
    "lossless-jpeg": (lambda: _patched(_small_jpeg(), b"\xff\xc0", 1, b"\xc3"), "lossless"),
    "arithmetic-jpeg": (lambda: _patched(_small_jpeg(), b"\xff\xc0", 1, b"\xc9"), "arithmetic"),
    "4:1:1-jpeg": (lambda: _patched(_small_jpeg(), b"\xff\xc0", 11, b"\x41"), "chroma sampling"),
    "chroma-over-luma-jpeg": (lambda: _patched(_small_jpeg(), b"\xff\xc0", 14, b"\x22"), "chroma sampling"),
    "camera-mpo": (
        lambda: encode(
            textured_photo(12, (800, 600)), "MPO", save_all=True, append_images=[textured_photo(13, (64, 48))]
        ),
        "MPO is not a plain JPEG",
    ),
    "png": (lambda: encode(textured_photo(7, (800, 600)), "PNG"), "PNG is not a plain JPEG"),
    "webp": (lambda: encode(textured_photo(8, (800, 600)), "WEBP"), "WEBP is not a plain JPEG"),
    "panorama-jpeg": (lambda: encode(textured_photo(15, (5000, 1000)), quality=90), "aspect ratio"),
}


@functools.cache
def lane_file(case: str) -> bytes:
    return LANE_CASES[case]()


def reference(data: bytes) -> np.ndarray:
    return pre(decode_image(data))


def on_lane(datas: list[bytes], orientations: list[int] | None = None) -> list[np.ndarray]:
    results = decode_batch(datas, orientations or [1] * len(datas), pre, "cpu")
    assert all(not isinstance(result, Exception) for result in results), results
    return [pre.normalise(result.pixels.numpy()) for result in results]


def test_lane_input_is_within_the_decode_tolerance_of_the_reference() -> None:
    """One batch, as the lane sends it: every file within the tolerance, in its place in the batch."""
    cases = list(LANE_CASES)
    datas = [lane_file(case) for case in cases]
    for case, data in zip(cases, datas, strict=True):
        assert refusal(open_image(data), data, pre) is None, case
    for case, data, pixels in zip(cases, datas, on_lane(datas), strict=True):
        assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
        difference = np.abs(pixels - reference(data))
        assert difference.max() <= MAX_ABS, f"{case}: max {difference.max():.4f}"
        assert np.quantile(difference, 0.99) <= P99_ABS, f"{case}: p99 {np.quantile(difference, 0.99):.4f}"
        assert difference.mean() <= MEAN_ABS, f"{case}: mean {difference.mean():.5f}"


def test_lane_input_embeds_like_the_reference(tiny_embedder) -> None:
    datas = [lane_file(case) for case in LANE_CASES]
    results = decode_batch(datas, [1] * len(datas), pre, "cpu")
    lane = tiny_embedder.embed_images(torch.stack([result.pixels for result in results]))  # a tensor batch, uint8
    full = tiny_embedder.embed_images(np.stack([reference(data) for data in datas]))
    assert (lane * full).sum(axis=1).min() >= MIN_COSINE


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_files_the_lane_would_not_match_are_refused_from_their_header(case: str) -> None:
    make, why = CPU_CASES[case]
    data = make()
    found = refusal(open_image(data), data, pre)
    assert found is not None and why in found, found


def test_a_resize_mode_the_lane_does_not_reproduce_refuses_every_file() -> None:
    data = lane_file("0.3MP-jpeg")
    assert "resize mode" in refusal(open_image(data), data, Preprocessor(resize_mode="longest"))


def test_a_file_the_decoder_refuses_in_a_batch_leaves_the_others_decoded() -> None:
    """A JPEG cut short passes the header check; the batched call fails, each file is tried alone, and only the
    cut one comes back as the exception that refused it (the lane then hands it to a CPU worker)."""
    good = lane_file("0.3MP-jpeg")
    cut = good[: int(len(good) * 0.7)]
    assert refusal(open_image(cut), cut, pre) is None
    results = decode_batch([good, cut, good], [1, 1, 1], pre, "cpu")
    assert isinstance(results[1], Exception)
    assert all(not isinstance(results[i], Exception) for i in (0, 2))
    assert torch.equal(results[0].pixels, results[2].pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_applies_it(orientation: int) -> None:
    """Every EXIF orientation: the turn on a tensor equals Pillow's exif_transpose pixel for pixel, and a camera
    file carrying it is decoded upright, within the tolerance, with the header's upright size."""
    stored = textured_photo(30, (96, 64))
    tagged = stored.copy()
    exif = tagged.getexif()
    exif[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(tagged))
    tensor = torch.from_numpy(np.asarray(stored).transpose(2, 0, 1).copy())
    turned = turn_upright(tensor, orientation).numpy().transpose(1, 2, 0)
    assert turned.shape == expected.shape
    np.testing.assert_array_equal(turned, expected)

    data = exif_photo(31, size=(640, 400), orientation=orientation)
    header = Header(open_image(data))
    assert header.orientation == orientation
    (pixels,) = on_lane([data], [header.orientation])
    difference = np.abs(pixels - reference(data))
    assert difference.max() <= MAX_ABS and difference.mean() <= MEAN_ABS, (difference.max(), difference.mean())


def test_the_perceptual_hash_from_the_lane_matches_the_cpu_hash() -> None:
    """Duplicates are found across decoders: the lane's 128x128 thumbnail hashes within a few bits of the CPU's."""
    for case in ("12MP-jpeg", "greyscale-jpeg", "0.3MP-jpeg", "small-upscaled-jpeg"):
        data = lane_file(case)
        (decoded,) = decode_batch([data], [1], pre, "cpu")
        cpu = phash(decode_image(data, reduce_for=pre.reduce_for))
        assert hamming(phash_of_grey(decoded.grey), cpu) <= 4, case
        assert hamming(phash(Image.open(io.BytesIO(data))), cpu) <= 4

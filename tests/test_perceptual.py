"""Perceptual hashes on pictures saved again (re-encoded, resized, cropped a little, rotated by EXIF) against
unrelated pictures, through the same decode the pipeline runs (reduced, upright)."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from imgvec.embed.decode import decode_image
from imgvec.embed.perceptual import HASH_BITS, dhash, hamming, phash
from tests.helpers import encode, textured_photo

RESAVED = 10
"""At most this many bits apart: the same picture saved again (benchmarks/duplicates.py measures the choice)."""


@pytest.fixture(scope="module")
def originals() -> list[Image.Image]:
    return [textured_photo(seed, (1600, 1200)) for seed in range(8)]


def variants(image: Image.Image) -> dict[str, bytes]:
    w, h = image.size
    crop = image.crop((int(w * 0.025), int(h * 0.025), int(w * 0.975), int(h * 0.975)))
    # a camera that stores the sensor's orientation: pixels lying on their side, EXIF Orientation 6 says "turn"
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())
    return {
        "jpeg q60": encode(image, "JPEG", quality=60),
        "jpeg q95": encode(image, "JPEG", quality=95),
        "png": encode(image, "PNG"),
        "50 %": encode(image.resize((w // 2, h // 2)), "JPEG", quality=85),
        "25 %": encode(image.resize((w // 4, h // 4)), "JPEG", quality=75),
        "5 % crop": encode(crop, "JPEG", quality=85),
        "EXIF-rotated": sideways,
    }


@pytest.mark.parametrize("hash_of", [phash, dhash], ids=["phash", "dhash"])
def test_a_picture_saved_again_is_a_few_bits_away_and_unrelated_ones_are_far(originals, hash_of) -> None:
    reference = [hash_of(decode_image(encode(image, "JPEG", quality=92), reduce_for=224)) for image in originals]
    assert all(0 <= value < 2**HASH_BITS for value in reference)
    for image, expected in zip(originals, reference, strict=True):
        for name, data in variants(image).items():
            distance = hamming(expected, hash_of(decode_image(data, reduce_for=224)))
            assert distance <= RESAVED, (name, distance)
    unrelated = [hamming(a, b) for a, b in itertools.combinations(reference, 2)]
    assert min(unrelated) > RESAVED + 4, sorted(unrelated)[:5]


def test_the_reduced_decode_and_the_full_one_hash_alike(originals) -> None:
    """The pipeline hashes what it decoded for the model (reduced); the service or a later run may hash a full
    decode: both must agree."""
    for image in originals:
        data = encode(image, "JPEG", quality=90)
        assert hamming(phash(decode_image(data, reduce_for=224)), phash(decode_image(data))) <= 2

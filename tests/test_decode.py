"""Every kind of file a photo collection holds becomes an upright RGB image or one clear reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imgvec.embed.decode import decode_image
from imgvec.errors import ImageDecodeError
from tests.helpers import encode, photo


def test_plain_jpeg_decodes_to_rgb() -> None:
    image = decode_image(encode(photo(1)))
    assert image.mode == "RGB"
    assert image.size == (320, 240)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode_image(encode(photo(2, (320, 240)), exif=exif.tobytes()))
    assert image.size == (240, 320)


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = decode_image(encode(photo(3).convert("CMYK")))
    assert image.mode == "RGB"


def test_palette_with_transparency_composites_on_white() -> None:
    paletted = Image.new("P", (40, 40), 0)
    paletted.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    paletted.paste(1, (0, 0, 20, 40))
    data = encode(paletted, "PNG", transparency=0)
    pixels = np.asarray(decode_image(data))
    assert tuple(pixels[5, 30]) == (255, 255, 255)  # transparent black became white, not black
    assert tuple(pixels[5, 5]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_modes_composite_on_white(mode: str) -> None:
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 0)).convert(mode)
    pixels = np.asarray(decode_image(encode(rgba, "PNG")))
    assert pixels.shape == (16, 16, 3)
    assert pixels.min() == 255


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    data = encode(grey, "PNG")
    pixels = np.asarray(decode_image(data))
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    assert abs(int(pixels[0, 0, 0]) - 128) <= 1  # Pillow's plain convert would give 255


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixels = np.asarray(decode_image(data))
    assert pixels[10, 10, 0] > 200 and pixels[10, 10, 2] < 50


def test_heic_decodes() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("this libheif build has no HEVC encoder to make a test file")
    data = encode(photo(4), "HEIF", quality=90)
    image = decode_image(data)
    assert image.mode == "RGB" and image.size == (320, 240)


def test_mislabelled_png_named_jpg_still_decodes() -> None:
    # the extension lies, the content is a valid PNG: index it rather than refuse it
    assert decode_image(encode(photo(5), "PNG")).size == (320, 240)


def test_webp_tiff_bmp_decode() -> None:
    for fmt in ("WEBP", "TIFF", "BMP"):
        assert decode_image(encode(photo(6), fmt)).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"\x00\x01garbage" * 50, "not a recognised image format"),
        (b"this is a text file named holiday.jpg\n", "not a recognised image format"),
    ],
)
def test_non_images_are_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_refused() -> None:
    data = encode(photo(7, (640, 480)), quality=95)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match=r"over the limit|bomb"):
        decode_image(_png_header_only(40_000, 40_000))


def test_pixel_limit_is_configurable() -> None:
    data = encode(photo(8, (400, 300)))
    with pytest.raises(ImageDecodeError, match="400x300"):
        decode_image(data, max_pixels=100_000)
    assert decode_image(data, max_pixels=120_000).size == (400, 300)


@pytest.mark.parametrize("reduce_for", [None, 224])
def test_a_jpeg_too_short_for_the_size_it_declares_is_a_decode_failure(reduce_for) -> None:
    """libjpeg fills what a file lacks with copies of its last block and only warns: a few hundred bytes whose
    header says 14000x14000 decoded as a valid picture, at every scale."""
    data = bytearray(encode(photo(3, (64, 64))))
    frame = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, 14_000, 14_000)
    for cut in (bytes(data), bytes(data[:693])):
        with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
            decode_image(cut, reduce_for=reduce_for)
    progressive = encode(photo(3, (640, 480)), progressive=True)  # not judged by size: runs of blocks cost less
    assert decode_image(progressive, reduce_for=reduce_for).size[0] > 0


def test_a_huge_png_is_reduced_a_strip_at_a_time_to_the_same_pixels() -> None:
    """The strip path must give what converting and reducing the whole picture gives."""
    from imgvec.embed.decode import to_rgb

    rng = np.random.default_rng(5)
    for mode in ("RGB", "RGBA", "L", "P"):
        pixels = rng.integers(0, 255, (1500, 1100, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        image = Image.fromarray(pixels[..., :4] if mode == "RGBA" else pixels[..., :3])
        image = image.convert(mode) if mode in ("L", "P") else image
        data = encode(image, "PNG")
        reduced = decode_image(data, reduce_for=224)
        expected = to_rgb(Image.open(io.BytesIO(data))).reduce(2)
        assert reduced.size == expected.size == (550, 750)
        assert np.array_equal(np.asarray(reduced), np.asarray(expected)), mode

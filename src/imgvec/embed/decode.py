"""Bytes → an RGB picture, or an ImageDecodeError whose message is the reason a person can act on.

Photo collections hold everything: phone HEICs, CMYK scans, 16-bit TIFFs, animated GIFs, files cut short by a
failed copy, and files whose extension lies. Each becomes either a clean RGB image or one clear reason.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from imgvec.errors import ImageDecodeError

try:  # HEIC/HEIF from phones; the opener registers with Pillow once per process.
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pass

# A truncated file is an error we record, not a grey half-picture we would silently embed.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit (``max_pixels``, the --max-pixels flag) replaces Pillow's, which refused anything over 179 MP
# whatever the flag said. It is checked from the header, before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 200_000_000
"""Larger than any camera photo (a 150 MP medium-format frame fits); a bomb of 30000x30000 does not."""

REDUCE_MARGIN = 2
"""A reduced decode keeps the short side at least this many times the model's input size. The final bicubic
resize then still sees several source pixels per output pixel, which holds the tensor within the tolerance that
``tests/test_decode_reduced.py`` states (docs/performance.md); at 1x the error triples for little gain."""

_WHITE = (255, 255, 255)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_for: int | None = None) -> Image.Image:
    """Decode one image file's bytes to an upright RGB image (first frame if animated).

    ``reduce_for``: the short side the model's input needs. A 12 MP photo is then never decoded in full to make a
    224 px input: a JPEG is decoded at a reduced DCT scale (libjpeg's 1/2, 1/4, 1/8), which skips most of the
    inverse transforms and the colour conversion; any other format is box-reduced right after decoding, which
    spares the bicubic resize most of its work. Either way the short side stays at least ``REDUCE_MARGIN`` times
    ``reduce_for``. None: the full picture, as the reference preprocessing sees it."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image format (starts with {data[:8]!r})") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"truncated or corrupt image header: {exc}") from None

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} ({width * height / 1e6:.0f} MP), over the limit of "
            f"{max_pixels / 1e6:.0f} MP; raise --max-pixels to index it"
        )
    try:
        image.seek(0)
        # MPO (the multi-picture JPEG many cameras write) is a JPEG subclass: same reduced decode.
        if reduce_for and isinstance(image, JpegImagePlugin.JpegImageFile):
            _draft(image, reduce_for * REDUCE_MARGIN)
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"truncated or corrupt image data ({image.format}): {exc}") from None

    image = to_rgb(_upright(image))
    if reduce_for:
        # Powers of two only, like libjpeg's scales: an odd box (3x3) shifted the sampling grid enough to triple
        # the error on fine detail.
        factor = 1 << max(0, (min(image.size) // (reduce_for * REDUCE_MARGIN)).bit_length() - 1)
        if factor >= 2:
            image = image.reduce(factor)
    return image


def _draft(image: ImageFile.ImageFile, short_side: int) -> None:
    """Ask libjpeg for the smallest DCT scale whose short side is still at least ``short_side``."""
    width, height = image.size
    scale = short_side / min(width, height)
    if scale < 1:
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def _upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a photo shot in portrait must not be embedded lying on its side."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost us a valid picture
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, transparency composited on white.

    Pillow's ``convert("RGB")`` drops alpha (transparent pixels turn whatever colour they hide, often black)
    and clips 16-bit values to white; both would change what the model sees.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float32)  # exact for 16-bit values; half float64's memory
        scale = 257.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
        grey = np.clip(values / scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        grey = np.clip(values * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")

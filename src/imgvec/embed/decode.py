"""Bytes → an RGB picture, or an ImageDecodeError whose message is the reason a person can act on.

Photo collections hold everything: phone HEICs, CMYK scans, 16-bit TIFFs, animated GIFs, files cut short by a
failed copy, and files whose extension lies. Each becomes either a clean RGB image or one clear reason.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image within ``max_pixels`` can plausibly be: uncompressed 16-bit RGBA, plus room for
    metadata. A bigger file is not read into memory at all (by the pipeline's readers, or for a thumbnail)."""
    return max_pixels * 8 + (64 << 20)


REDUCE_MARGIN = 2
"""A reduced decode keeps the short side at least this many times the model's input size. The final bicubic
resize then still sees several source pixels per output pixel, which holds the tensor within the tolerance that
``tests/test_decode_reduced.py`` states (docs/performance.md); at 1x the error triples for little gain."""

_WHITE = (255, 255, 255)
ORIENTATION = 0x0112


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The file's header, checked (format, size, the pixel limit); no pixel is decoded yet."""
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
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        _require_entropy_data(image, data)
    return image


def decode_cost(image: Image.Image, reduce_for: int | None = None) -> int:
    """Bytes a decode of ``image`` (from ``open_image``) holds at its peak: what the service reserves before it
    decodes, so concurrent requests for huge pictures wait instead of exhausting memory."""
    width, height = image.size
    if reduce_for and isinstance(image, JpegImagePlugin.JpegImageFile):
        scale = min(1.0, _draft_side(image, reduce_for) / min(width, height))
        step = 8 if scale <= 1 / 8 else 4 if scale <= 1 / 4 else 2 if scale <= 1 / 2 else 1
        width, height = math.ceil(width / step), math.ceil(height / step)
    bands = max(3, len(image.getbands()))
    held = width * height * bands * (4 if image.mode in _WIDE_MODES else 1)
    # the decoder's own buffers add about half again (measured: docs/serving.md)
    # the orientation is not read here: Pillow decodes a whole PNG to find its EXIF, which is what is being budgeted
    strips = bool(reduce_for) and image.mode not in _WIDE_MODES
    return held * 3 // 2 if strips else 2 * held + width * height * 3


RELEASE_AFTER_BYTES = 64 << 20
"""A decode this costly gives its memory back when done; a phone photo's (a few MB at its reduced scale) does not."""


class DecodeBudget:
    """At most ``total`` bytes of decoding at once across threads (``decode_cost`` of each): the service's
    concurrent requests for huge pictures take turns instead of exhausting memory; ordinary photos, each a few
    megabytes at their reduced scale, never wait. One picture costlier than the whole budget runs alone."""

    def __init__(self, total: int, *, release: Callable[[], object] | None = None) -> None:
        """``release``: called after a decode of at least ``RELEASE_AFTER_BYTES``, to give its memory back to the
        system (the service passes ``allocator.release_free_memory``)."""
        self.total = total
        self.used = 0
        self.release = release
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        cost = min(cost, self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.used + cost <= self.total)
            self.used += cost
        try:
            yield
        finally:
            with self._changed:
                self.used -= cost
                self._changed.notify_all()
            if self.release is not None and cost >= RELEASE_AFTER_BYTES:
                self.release()

    def decode(
        self, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_for: int | None = None
    ) -> Image.Image:
        image = open_image(data, max_pixels=max_pixels)
        with self.reserve(decode_cost(image, reduce_for)):
            result = decode_opened(image, reduce_for=reduce_for)
            if result is not image:
                image.close()  # the full-size pixels go now, before ``release`` gives their pages back
            return result


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_for: int | None = None) -> Image.Image:
    """Decode one image file's bytes to an upright RGB image (first frame if animated).

    ``reduce_for``: the short side the model's input needs. A 12 MP photo is then never decoded in full to make a
    224 px input: a JPEG is decoded at a reduced DCT scale (libjpeg's 1/2, 1/4, 1/8), which skips most of the
    inverse transforms and the colour conversion; any other format is box-reduced right after decoding, a strip at
    a time where the box sums allow it, so a 196 MP PNG never exists a second time as full-size RGB. Either way the
    short side stays at least ``REDUCE_MARGIN`` times ``reduce_for``. None: the full picture, as the reference
    preprocessing sees it."""
    return decode_opened(open_image(data, max_pixels=max_pixels), reduce_for=reduce_for)


def decode_opened(image: Image.Image, *, reduce_for: int | None = None) -> Image.Image:
    """``decode_image`` for a header ``open_image`` has checked."""
    try:
        image.seek(0)
        # MPO (the multi-picture JPEG many cameras write) is a JPEG subclass: same reduced decode.
        if reduce_for and isinstance(image, JpegImagePlugin.JpegImageFile):
            _draft(image, _draft_side(image, reduce_for))
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"truncated or corrupt image data ({image.format}): {exc}") from None

    factor = _reduce_factor(image.size, reduce_for)
    if factor >= 2 and _strips_apply(image, reduce_for):
        return _reduced_in_strips(image, factor)
    image = to_rgb(_upright(image))
    if factor >= 2:
        image = image.reduce(factor)
    return image


def _reduce_factor(size: tuple[int, int], reduce_for: int | None) -> int:
    """Powers of two only, like libjpeg's scales: an odd box (3x3) shifted the sampling grid enough to triple the
    error on fine detail."""
    if not reduce_for:
        return 1
    return 1 << max(0, (min(size) // (reduce_for * REDUCE_MARGIN)).bit_length() - 1)


_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
STRIP_ROWS = 256
"""Rows of a loaded picture converted and reduced at a time (a multiple of every power-of-two factor used)."""


def _strips_apply(image: Image.Image, reduce_for: int | None) -> bool:
    """Strip by strip gives the very pixels of the whole-picture path where each output pixel depends on its own
    box alone: not for 16-bit and float modes (their scale comes from the whole picture's maximum), nor for a
    picture with an EXIF rotation (its boxes are laid out on the rotated picture). Asked once ``image`` is loaded."""
    if not reduce_for or image.mode in _WIDE_MODES:
        return False
    return image.getexif().get(ORIENTATION, 1) == 1


def _reduced_in_strips(image: Image.Image, factor: int) -> Image.Image:
    width, height = image.size
    rows = max(factor, STRIP_ROWS // factor * factor)
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        strip = to_rgb(image.crop((0, top, width, min(height, top + rows))))
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _require_entropy_data(image: JpegImagePlugin.JpegImageFile, data: bytes) -> None:
    """A baseline JPEG spends at least two bits on every 8x8 block (a DC code and an end-of-block code), so its
    size bounds the picture it can hold. libjpeg fills a picture whose data ends early with copies of the last
    block and only warns, which Pillow does not pass on: a 693-byte file that declares 14000x14000 decoded as a
    valid picture. Progressive and arithmetic-coded files can be smaller (runs of empty blocks) and are not judged."""
    if _frame_marker(data) not in HUFFMAN_SEQUENTIAL or not getattr(image, "layer", None):
        return
    width, height = image.size
    layers = image.layer
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    blocks = sum(
        math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
        for _, h, v, _ in layers
    )
    needed, size = blocks * 2 // 8, len(data)
    if size < needed:
        raise ImageDecodeError(
            f"truncated or corrupt image data (JPEG): a {width}x{height} JPEG needs at least {needed} bytes, "
            f"the file has {size}"
        )


HUFFMAN_SEQUENTIAL = (0xC0, 0xC1)
"""Baseline and extended sequential Huffman frames (SOF0, SOF1)."""


def _frame_marker(data: bytes) -> int | None:
    """The SOFn marker's second byte, read from the segments before the first scan."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:
            return None
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def _draft_side(image: JpegImagePlugin.JpegImageFile, reduce_for: int) -> int:
    """The short side a JPEG's reduced decode keeps: ``REDUCE_MARGIN`` times the model's input, twice that for a
    JPEG whose chroma is halved across but not down (4:2:2, what many cameras write). libjpeg's scaled decode
    gives such chroma colour fringes at edges (up to 0.54 normalised units off the reference, mean over 0.01);
    decoding one DCT scale larger and box-reducing by 2 after keeps it within the tolerance, for ~25 % more time
    on those files alone (docs/performance.md)."""
    layers = getattr(image, "layer", None) or []
    if len(layers) == 3:
        (_, h, v, _), *chroma = layers
        if h > v and all((ch, cv) == (1, 1) for _, ch, cv, _ in chroma):
            return reduce_for * REDUCE_MARGIN * 2
    return reduce_for * REDUCE_MARGIN


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

"""Perceptual hashes: 64 bits of an image's coarse structure that stay nearly the same when the picture is
re-encoded, resized or lightly cropped, and differ in about half their bits between unrelated pictures. Two
documents whose hashes differ in a few bits (Hamming distance) are the same picture saved again.

Computed from the picture already decoded and turned upright (``decode.py``), so a copy whose EXIF says "rotated"
hashes as its upright twin, and the hash costs a 32x32 resize of pixels the pipeline holds anyway. Plain numpy:
the DCT of a 32x32 block is two small matrix products, which needs no scipy (``imagehash`` pulls in scipy and
PyWavelets for the same arithmetic).

- ``phash``: the low 8x8 frequencies of the DCT of a 32x32 grey thumbnail, each bit "above the median". Robust to
  re-encoding and scaling; the usual choice (Zauner, "Implementation and Benchmarking of Perceptual Image Hash
  Functions", 2010).
- ``dhash``: each bit "brighter than its right neighbour" on a 9x8 grey thumbnail; cheaper, a little less robust
  to crops. Kept for the benchmark's comparison (``benchmarks/duplicates.py``).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

HASH_BITS = 64
SIDE = 32
"""The thumbnail a pHash is computed on."""
LOW = 8
"""The low frequencies kept: 8x8 = 64 bits."""


@cache
def _dct_rows() -> np.ndarray:
    """The first ``LOW`` rows of the DCT-II matrix of size ``SIDE`` (its scale does not matter: bits compare with
    the median)."""
    k = np.arange(LOW)[:, None]
    n = np.arange(SIDE)[None, :]
    return np.cos(np.pi * (2 * n + 1) * k / (2 * SIDE))


BOX_FACTOR = 4
"""The box-filtered thumbnail a hash starts from is this many times its final side (``grey_box``)."""


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return _lanczos(grey_box(image, size), size)


def grey_box(image: Image.Image, size: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    """The grey picture box-filtered to ``BOX_FACTOR`` times ``size`` (kept as it is when a side is already smaller):
    a draft-like shrink first, then a Lanczos resize (``_lanczos``). The result is the same picture at 32x32
    whatever the source size, which is what makes a resized copy hash alike. A GPU decode lane makes this
    thumbnail on the device and sends only it back (``embed/gpu_decode.py``)."""
    grey = image.convert("L")
    box = (size[0] * BOX_FACTOR, size[1] * BOX_FACTOR)
    if grey.width > box[0] and grey.height > box[1]:
        grey = grey.resize(box, Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.uint8)


def _lanczos(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(grey, "L").resize(size, Image.Resampling.LANCZOS), dtype=np.float64)


def phash(image: Image.Image) -> int:
    return phash_of_grey(grey_box(image))


def phash_of_grey(grey: np.ndarray) -> int:
    """``phash`` from the thumbnail ``grey_box`` makes (uint8, height x width)."""
    rows = _dct_rows()
    low = rows @ _lanczos(np.ascontiguousarray(grey, dtype=np.uint8), (SIDE, SIDE)) @ rows.T
    return _bits(low > np.median(low))


def dhash(image: Image.Image) -> int:
    pixels = _grey(image, (LOW + 1, LOW))
    return _bits(pixels[:, 1:] > pixels[:, :-1])


def hamming(a: int, b: int) -> int:
    """Bits that differ: 0 for the same picture saved again (often), about 32 for unrelated pictures."""
    return (a ^ b).bit_count()


def _bits(mask: np.ndarray) -> int:
    value = 0
    for bit in mask.reshape(-1):
        value = (value << 1) | int(bit)
    return value

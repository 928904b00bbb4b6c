"""JPEG bytes → the model's uint8 input on a torch device: nvJPEG (torchvision's batched ``decode_jpeg``) on a GPU,
then the upright turn, the resize and the crop there too. The same code runs on CPU tensors (libjpeg-turbo inside
torchvision), which is how CI holds it to the CPU path's tolerance without a GPU (``tests/test_gpu_decode.py``).

Which files may take this path is decided from the header, on the CPU (``refusal``): a baseline, extended or
progressive 8-bit JPEG in YCbCr or grey with the usual chroma sampling, within the aspect ratios the whole-picture
resize serves. Anything else (CMYK, 12-bit, lossless, arithmetic coding, odd sampling, panoramas, other formats)
is the CPU decoder's, as is any file nvJPEG refuses when it tries: never a failure of its own.

The resize is torch's antialiased bicubic, a port of Pillow's filter (a = -0.5), from the full decode: what the
reference preprocessing does, without the CPU path's reduced DCT decode. The perceptual hash's 128x128 grey
thumbnail is made here too, so only 16 KB per picture comes back to the host (``perceptual.grey_box``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, JpegImagePlugin

from imgvec.embed.decode import _frame_marker
from imgvec.embed.perceptual import BOX_FACTOR, SIDE
from imgvec.embed.preprocess import CROP_FIRST_AREA, Preprocessor

if TYPE_CHECKING:
    import torch

LANE_FRAMES = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
"""Huffman-coded 8-bit frames (SOF0-2); lossless (SOF3), hierarchical and arithmetic-coded frames are not nvJPEG's."""
LUMA_SAMPLING = frozenset({(1, 1), (2, 1), (1, 2), (2, 2)})
"""4:4:4, 4:2:2, 4:4:0 and 4:2:0 with chroma at (1, 1): what cameras and phones write."""
GREY_BOX = SIDE * BOX_FACTOR
_LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601-2, as Pillow's convert("L")."""


@dataclass(frozen=True, slots=True)
class Decoded:
    pixels: torch.Tensor
    """(3, size, size) uint8 on the lane's device."""
    grey: np.ndarray
    """The perceptual hash's thumbnail (``perceptual.grey_box``), on the host."""


def refusal(image: Image.Image, data: bytes, preprocessor: Preprocessor) -> str | None:
    """Why the file opened as ``image`` (``decode.open_image``) is not one the GPU lane decodes as the CPU would;
    None when it is."""
    if not preprocessor.fast_path:
        return f"resize mode {preprocessor.resize_mode}"
    if type(image) is not JpegImagePlugin.JpegImageFile or image.format != "JPEG":
        return f"{image.format} is not a plain JPEG"
    frame = _frame_marker(data)
    if frame not in LANE_FRAMES:
        return "a lossless, hierarchical or arithmetic-coded JPEG" if frame is not None else "no frame header"
    if image.mode not in ("RGB", "L"):
        return f"{image.mode} JPEG"
    if getattr(image, "bits", 8) != 8:
        return f"{image.bits}-bit JPEG"
    layers = getattr(image, "layer", None) or []
    if image.mode == "RGB":
        if len(layers) != 3 or image.info.get("adobe_transform") == 0:
            return "RGB-coded JPEG (no YCbCr transform)"
        (_, h, v, _), *chroma = layers
        if (h, v) not in LUMA_SAMPLING or any((ch, cv) != (1, 1) for _, ch, cv, _ in chroma):
            return f"chroma sampling {[(lh, lv) for _, lh, lv, _ in layers]}"
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if int(preprocessor.size * long / short) * preprocessor.size > CROP_FIRST_AREA * preprocessor.size**2:
        return "aspect ratio over 4:1 (the CPU resizes only the region kept)"
    return None


def decode_batch(
    datas: Sequence[bytes], orientations: Sequence[int], preprocessor: Preprocessor, device: str
) -> list[Decoded | Exception]:
    """Each file's model input and hash thumbnail, or the exception that refused it. The batch goes to the decoder
    in one call; when that fails, each file alone, so one refused file never costs the others the lane."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_torchvision()
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        decoded: list[torch.Tensor | Exception] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except Exception:  # noqa: BLE001 - one bad file fails the batched call: find out which, one by one
        decoded = []
        for one in encoded:
            try:
                decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except Exception as exc:  # noqa: BLE001 - this file goes to the CPU decoder, which says why if it fails
                decoded.append(exc)
    results: list[Decoded | Exception] = []
    with torch.inference_mode():
        for picture, orientation in zip(decoded, orientations, strict=True):
            if isinstance(picture, Exception):
                results.append(picture)
                continue
            upright = turn_upright(picture, orientation)
            results.append(Decoded(model_pixels(upright, preprocessor), grey_thumbnail(upright)))
    return results


def _quiet_torchvision() -> None:
    """torchvision 0.29 warns on every decode that TorchCodec supersedes its decoders; the lane's batched nvJPEG
    call has no TorchCodec equivalent yet (docs/performance.md), so the warning says nothing a user can act on."""
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


def turn_upright(picture: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as stored → as shown: EXIF orientation 1-8, as Pillow's ``ImageOps.exif_transpose`` turns it."""
    import torch

    if orientation == 2:
        return picture.flip(-1)
    if orientation == 3:
        return picture.flip(-2, -1)
    if orientation == 4:
        return picture.flip(-2)
    if orientation == 5:
        return picture.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(picture, -1, (-2, -1))
    if orientation == 7:
        return picture.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(picture, 1, (-2, -1))
    return picture


def model_pixels(picture: torch.Tensor, preprocessor: Preprocessor) -> torch.Tensor:
    """(3, H, W) upright uint8 → (3, size, size) uint8: the short side resized to ``size`` (the long side truncated,
    as torchvision's Resize), then the centre crop (offsets rounded half to even, as its CenterCrop)."""
    import torch

    size = preprocessor.size
    height, width = picture.shape[-2:]
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    if (new_w, new_h) != (width, height):
        resized = torch.nn.functional.interpolate(
            picture[None].float(),
            size=(new_h, new_w),
            mode=preprocessor.interpolation,
            antialias=True,
            align_corners=False,
        )[0]
        picture = resized.round_().clamp_(0, 255).to(torch.uint8)
    return picture[:, top : top + size, left : left + size].contiguous()


def grey_thumbnail(picture: torch.Tensor) -> np.ndarray:
    """The grey picture, area-averaged to 128x128 when both sides are larger (``perceptual.grey_box``), on the host."""
    import torch

    weights = torch.tensor(_LUMA, device=picture.device).reshape(3, 1, 1)
    grey = (picture.float() * weights).sum(0)
    height, width = grey.shape
    if height > GREY_BOX and width > GREY_BOX:
        grey = torch.nn.functional.interpolate(grey[None, None], size=(GREY_BOX, GREY_BOX), mode="area")[0, 0]
    return grey.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()

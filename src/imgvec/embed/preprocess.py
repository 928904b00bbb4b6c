"""RGB picture → the model's input tensor, equal to open_clip's reference preprocessing.

Written with PIL and numpy rather than torchvision so that decode workers need no torch import (faster to
start, less memory per worker). ``tests/test_preprocess.py`` holds it equal to open_clip's own transform.

It is done in two halves. Decode workers resize and crop (``pixels``: uint8, a quarter of float32's bytes through
the pipe and across to a GPU); the model's own process normalises (``normalise``), where the model runs: on a GPU
that is one fused operation on the device, not a float copy of every picture made by a CPU worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

CROP_FIRST_AREA = 4
"""Above this many times the output's area, the resize covers only the cropped region (an aspect ratio over 4:1).
Below it the whole picture is resized, as the reference does, bit for bit: the cropped resize can differ from it by
a step or two of 8-bit rounding in a few pixels (``tests/test_preprocess.py``)."""
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessor:
    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    _reference: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_open_clip_cfg(cls, cfg: dict[str, Any]) -> Preprocessor:
        size = cfg.get("size", 224)
        if isinstance(size, (tuple, list)):
            size = size[0] if size[0] == size[1] else tuple(size)
        return cls(
            size=size,
            mean=tuple(cfg.get("mean", OPENAI_MEAN)),
            std=tuple(cfg.get("std", OPENAI_STD)),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
            fill_color=cfg.get("fill_color", 0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }

    @property
    def fast_path(self) -> bool:
        return self.resize_mode == "shortest" and isinstance(self.size, int) and self.interpolation in _RESAMPLE

    @property
    def reduce_for(self) -> int | None:
        """The short side a reduced decode must keep (see ``decode_image``); None where the resize is not by the
        short side, so a reduced decode could not know what it may drop."""
        return self.size if self.fast_path else None

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, size, size) float32, normalised: what the model takes."""
        return self.normalise(self.pixels(image))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 from ``pixels`` (one picture or a batch) → float32 model input. float32 is taken to be normalised
        already and passes as it is, so every embedder accepts either."""
        if pixels.dtype != np.uint8:
            return np.ascontiguousarray(pixels, dtype=np.float32)
        scale, shift = self.affine()
        shape = (3, 1, 1)
        out = pixels.astype(np.float32)
        out *= scale.reshape(shape)
        out += shift.reshape(shape)
        return out

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, ``x * scale + shift`` is ``(x / 255 - mean) / std``: one multiply-add per value, the same
        on numpy and on a GPU (``embed/clip.py``)."""
        std = np.asarray(self.std, dtype=np.float64)
        scale = 1.0 / (255.0 * std)
        shift = -np.asarray(self.mean, dtype=np.float64) / std
        return scale.astype(np.float32), shift.astype(np.float32)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """(3, size, size) uint8: the picture resized and cropped as the model sees it, before normalisation."""
        if not self.fast_path:
            return self._reference_pixels(image)
        width, height = image.size
        # torchvision.Resize(int): the short side becomes `size`, the long side is truncated, not rounded.
        if width <= height:
            new_w, new_h = self.size, int(self.size * height / width)
        else:
            new_w, new_h = int(self.size * width / height), self.size
        # torchvision.CenterCrop rounds the offset half-to-even, exactly like Python's round().
        top = round((new_h - self.size) / 2.0)
        left = round((new_w - self.size) / 2.0)
        if new_w * new_h <= CROP_FIRST_AREA * self.size * self.size:
            if (new_w, new_h) != (width, height):
                image = image.resize((new_w, new_h), _RESAMPLE[self.interpolation])
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            # Resize only the source region the crop keeps. Pillow's filter still reads the pixels around the box,
            # so this is the reference's resize-then-crop up to the rounding of its fixed-point weights, but cost
            # and memory follow the output: resizing the whole picture first made a 121-byte 1x10000 GIF a
            # 224x2240000 image (1.5 GB) on the way to 224x224.
            scale_x, scale_y = width / new_w, height / new_h
            box = (left * scale_x, top * scale_y, (left + self.size) * scale_x, (top + self.size) * scale_y)
            image = image.resize((self.size, self.size), _RESAMPLE[self.interpolation], box=box)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def _reference_pixels(self, image: Image.Image) -> np.ndarray:
        """Modes we do not re-implement (longest, squash, non-square) go through open_clip's own resize and crop;
        its last two steps (to float, normalise) are ``normalise``'s."""
        if self._reference is None:
            from open_clip.transform import image_transform
            from torchvision.transforms import Compose, Normalize, ToTensor

            transform = image_transform(
                self.size,
                is_train=False,
                mean=self.mean,
                std=self.std,
                resize_mode=self.resize_mode,
                interpolation=self.interpolation,
                fill_color=self.fill_color,
            )
            steps = list(transform.transforms)
            if not (len(steps) >= 2 and isinstance(steps[-2], ToTensor) and isinstance(steps[-1], Normalize)):
                raise ValueError(f"open_clip's transform no longer ends in ToTensor, Normalize: {steps}")
            object.__setattr__(self, "_reference", Compose(steps[:-2]))
        picture = self._reference(image)
        return np.ascontiguousarray(np.asarray(picture.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))

"""Model inputs on their way to the model: numpy arrays from CPU decode workers, or tensors a GPU decode lane left
on the device (``pipeline/executors/gpu_lane.py``). Both are uint8 (3, H, W) per picture until the model's process
normalises them (``Preprocessor.normalise``). Nothing here imports torch unless a tensor is already in hand, so the
CPU-only paths (decode workers, the Lambda bundle) never load it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

Pixels = Any
"""``np.ndarray``, or a ``torch.Tensor`` on the model's device: one picture (3, H, W) or a batch (N, 3, H, W)."""


def is_tensor(pixels: Pixels) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(pixels, torch.Tensor)


def as_numpy(pixels: Pixels) -> np.ndarray:
    """For a runtime that takes numpy (ONNX Runtime, OpenVINO): a device tensor comes back to the host."""
    return pixels.cpu().numpy() if is_tensor(pixels) else pixels


def stack(pictures: Sequence[Pixels]) -> Pixels:
    """One batch from pictures of either kind. All numpy: a numpy batch. Any tensor: a tensor batch on that
    tensor's device, the numpy pictures copied over (a batch whose files went to both decoders)."""
    on_device = [i for i, picture in enumerate(pictures) if is_tensor(picture)]
    if not on_device:
        return np.stack(pictures)
    import torch

    device = pictures[on_device[0]].device
    if len(on_device) == len(pictures):
        return torch.stack(list(pictures))
    on_host = [i for i, picture in enumerate(pictures) if not is_tensor(picture)]
    first = pictures[on_device[0]]
    batch = torch.empty((len(pictures), *first.shape), dtype=first.dtype, device=device)
    batch[on_device] = torch.stack([pictures[i] for i in on_device])
    batch[on_host] = torch.from_numpy(np.stack([pictures[i] for i in on_host])).to(device)  # one copy for all
    return batch

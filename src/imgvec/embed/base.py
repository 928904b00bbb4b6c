"""The one interface the pipeline sees for a model, whatever runtime sits behind it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from imgvec.embed.pixels import Pixels
from imgvec.embed.preprocess import Preprocessor
from imgvec.embed.runtime import RuntimeChoice
from imgvec.identity import IndexIdentity


class Embedder(Protocol):
    identity: IndexIdentity
    preprocessor: Preprocessor
    runtime: RuntimeChoice
    """Resolved: the runtime, precision and device that embed images, and why."""

    def embed_images(self, pixels: Pixels) -> np.ndarray:
        """(N, 3, H, W) uint8 from ``preprocessor.pixels`` (normalised here, where the model runs), or float32
        already normalised (``preprocessor(image)``) → (N, dimension) float32, rows L2-normalised. A tensor on
        the model's device (a GPU decode lane's) is taken as it is."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → (N, dimension) float32, rows L2-normalised, in the same space as images."""
        ...

    def prepare_texts(self) -> str:
        """Settle how texts are embedded (export, measure, compile) now rather than in the first query: a
        long-lived process calls it when it loads the model. Returns the text runtime's name."""
        ...


def runs_on_gpu(embedder: Embedder) -> bool:
    """Whether the model runs on a CUDA device, known before its runtime is settled (which measures, on a first run:
    ``runtime`` is not asked for this)."""
    return str(getattr(embedder, "device", "cpu")).startswith("cuda")

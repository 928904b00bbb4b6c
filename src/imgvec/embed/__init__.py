"""CLIP models and image decoding: bytes in, L2-normalised vectors out."""

from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS, decode_image
from imgvec.embed.modelspec import ModelSpec, parse_model_spec
from imgvec.embed.preprocess import Preprocessor

__all__ = ["DEFAULT_MAX_PIXELS", "Embedder", "ModelSpec", "Preprocessor", "decode_image", "parse_model_spec"]

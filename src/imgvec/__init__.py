"""imgvec: turn a large image collection into a searchable CLIP vector index."""

__version__ = "0.1.0"

"""Typed errors.

Set-up problems (a wrong model for the index, a store that cannot be opened, a bad flag) stop a run with one
message that says what to do; they subclass these.  Per-file problems never stop a run: they become failure
records with a reason (``documents.Failure``), built from ``ImageDecodeError`` and friends.
"""

from __future__ import annotations


class ImgvecError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class UsageError(ImgvecError, ValueError):
    """Flags that cannot be honoured together or on this machine (exit code 2, like a bad flag)."""


class IdentityMismatchError(ImgvecError, ValueError):
    """Vectors from one model or dimension written to (or queried against) an index built for another.

    This is the bug imgvec exists to end: a 1024-dim index silently fed 512-dim CLIP vectors.
    """


class ModelSpecError(ImgvecError, ValueError):
    """A ``--model`` string that names no model imgvec can load."""


class ModelLoadError(ImgvecError, RuntimeError):
    """The model is well named but its weights cannot be had (offline, missing file, corrupt checkpoint)."""


class StoreError(ImgvecError, RuntimeError):
    """The store cannot be opened or written."""


class IndexNotFoundError(StoreError, LookupError):
    """The named index does not exist in the store."""


class SourceError(ImgvecError, OSError):
    """The source as a whole cannot be read (missing folder, not a directory)."""


class ImageDecodeError(ValueError):
    """One file is not a usable image; the message is the reason recorded for it."""

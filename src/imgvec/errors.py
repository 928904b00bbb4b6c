"""Typed errors.

Set-up problems (a wrong model for the index, a store that cannot be opened, a bad flag) stop a run with one
message that says what to do; they subclass these.  Per-file problems never stop a run: they become failure
records with a reason (``documents.Failure``), built from ``ImageDecodeError`` and friends.
"""

from __future__ import annotations

import re


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


class NoRunError(ImgvecError, LookupError):
    """No ingest has run for the index: there is no progress, metrics or failure list to show."""


class SourceError(ImgvecError, OSError):
    """The source as a whole cannot be read (missing folder, not a directory)."""


class ImageDecodeError(ValueError):
    """One file is not a usable image; the message is the reason recorded for it."""


class RuntimeChoiceError(ImgvecError, ValueError):
    """``--device``, ``--runtime`` or ``--precision`` that cannot be honoured here (no GPU, a pairing that does not
    exist): the model is named well, the machine or the combination is wrong."""


# -- a run's set-up: no file is to blame, the run stops with one line ------------------------------


class IndexBusyError(ImgvecError):
    """Another process is ingesting into the same index."""


class DecodeWorkersError(ImgvecError):
    """The decode workers cannot run here: no file is to blame."""


class RayWorkersError(ImgvecError):
    """The Ray workers cannot run (no cluster, no room, every new worker dies): no image is to blame."""


class MigrationError(ImgvecError):
    """The new index is not ready: the alias was left where it was."""


class JournalError(StoreError):
    """The run state cannot be opened or written (a full disk, a read-only store)."""


# -- the service: each becomes an HTTP status in ``service/app.py`` ----------------------------------


class NotInIndexError(IndexNotFoundError):
    """A document id the index does not hold (the service serves nothing else)."""


class NoVectorError(ImgvecError):
    """The document is indexed but not embedded yet: it has no neighbours to find."""


class ThumbnailError(ValueError):
    """The document names no readable image (the message says why)."""


# -- S3 reads: OSError, so that one file's read failure is recorded like any other I/O error --------


class TooManyRequestsError(OSError):
    """One read made more requests than ``MAX_SENDS_PER_READ``: the endpoint keeps answering with redirects."""


class ObjectTooLargeError(OSError):
    """An object over the size a caller accepts."""


UNWRITABLE_HELP = "committed batches are kept; free space or make the store writable, then run the same command again"
"""What to do when the store or its run state cannot be written: nothing was lost, the same command continues."""
_LANCE_ERROR = re.compile(r"LanceError\(\w+\): (.*?)(?:, /\S+\.rs:\d+:\d+)?$", re.DOTALL)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def reason(exc: BaseException) -> str:
    """A library's error as the few words a person reads: an OSError as its message and path, Lance's errors
    without the Rust source location they end with, anything else as it says itself."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc) or type(exc).__name__
    lance = _LANCE_ERROR.search(text)
    return lance.group(1) if lance else text


def errno_of(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``, also when a library reports it only in its text (Lance: "(os error 28)")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    match = _OS_ERROR.search(str(exc))
    return int(match.group(1)) if match else None

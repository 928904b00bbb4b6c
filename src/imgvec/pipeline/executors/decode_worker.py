"""What one decode worker does for one file: (read, with retries) → hash → decode → picture facts → preprocess.

Runs in worker processes (spawned: they import PIL and numpy, never torch), or in threads when workers=0.
Everything it needs arrives once through ``init_worker``. A task sends the item and, when the ingest's I/O
threads read it already (S3, network shares), its bytes; otherwise the worker reads the file itself, which
saves a copy through the pipe for fast local disks (``--io-concurrency 0``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgvec.documents import Failure, Picture, SourceItem
from imgvec.embed.decode import decode_opened, max_file_bytes, open_image
from imgvec.embed.gpu_decode import refusal
from imgvec.embed.picture import Header
from imgvec.embed.preprocess import Preprocessor
from imgvec.errors import ImageDecodeError
from imgvec.pipeline.executors.base import ForLane, Prepared
from imgvec.pipeline.retry import RetryPolicy, is_transient_os_error
from imgvec.sources.base import Source


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    source: Source
    preprocessor: Preprocessor
    max_pixels: int
    retry: RetryPolicy
    reduce_for: int | None = None
    """Decode at reduced size for this short side (``decode_image``); None: full decode."""


_config: WorkerConfig | None = None
PARENT_CHECK_SECONDS = 1.0
MAX_WARNINGS = 8
"""Decoder warnings kept per file: a broken file can warn once per chunk."""


def init_worker(config: WorkerConfig, *, parent_pid: int | None = None) -> None:
    """``parent_pid``: set in a worker process (threads share the main process and need none of this)."""
    global _config
    _config = config
    if parent_pid is not None:
        # Ctrl-C reaches the whole process group; the parent decides how to stop, workers must not die mid-task.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with_parent(parent_pid)
        # Decoder warnings (hundreds on a corpus of odd files) belong to a file, not raw to the terminal: each is
        # kept with the file being decoded and logged by the parent with its path (shown with -v).
        warnings.simplefilter("always")
        warnings.showwarning = _keep_warning


_decoding = threading.local()


def _keep_warning(message: Warning | str, category: type[Warning], *_: object) -> None:
    kept: list[str] | None = getattr(_decoding, "warnings", None)
    if kept is not None and len(kept) < MAX_WARNINGS:
        kept.append(f"{category.__name__}: {message}")


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose parent was killed (kill -9, the OOM killer) exits too. It would otherwise wait forever on
    the task queue, whose write end it holds itself, and every killed run would leave idle workers behind.
    The parent's pid comes from the parent: one killed while this worker was still starting is already gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="imgvec-parent-watch", daemon=True).start()


def worker_ready() -> int:
    """A no-op a new pool runs once: a worker that answers has started (``DecodePools`` checks)."""
    return os.getpid()


def read_item(source: Source, item: SourceItem, retry: RetryPolicy, max_pixels: int) -> bytes | Failure:
    """The item's bytes, transient errors retried; a lasting failure is returned as the item's failure."""
    if item.file_size > max_file_bytes(max_pixels):
        return Failure.of(
            item,
            "decode",
            f"file is {item.file_size / 1e9:.1f} GB, more than an image of {max_pixels / 1e6:.0f} MP can be; "
            "raise --max-pixels to index it",
        )
    try:
        return retry.call(lambda: source.read(item), is_transient_os_error)
    except OSError as exc:
        return Failure.of(item, "read", f"cannot read file: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a source's own error type is still one file's failure
        return Failure.of(item, "read", f"cannot read: {exc}")


def prepare(
    item: SourceItem, data: bytes | None = None, read_seconds: float = 0.0, lane: bool = False
) -> Prepared | ForLane | Failure:
    """``lane``: a GPU decode lane would take this file (``gpu_lane.LaneSplit``): if its header says the lane decodes
    it as this worker would (``gpu_decode.refusal``), only the header is read here and the bytes go on to the lane."""
    config = _config
    assert config is not None, "init_worker was not called"
    began = time.perf_counter()
    if data is None:
        read = read_item(config.source, item, config.retry, config.max_pixels)
        if isinstance(read, Failure):
            return read
        data = read
    read_done = time.perf_counter()
    read_seconds += read_done - began
    kept: list[str] = []
    _decoding.warnings = kept
    try:
        opened, header = opened_header(data, config.max_pixels)
        if lane and refusal(opened, data, config.preprocessor) is None:
            return ForLane(
                item,
                data,
                hashlib.sha256(data).hexdigest(),
                header,
                read_seconds,
                time.perf_counter() - read_done,
                tuple(kept),
            )
        pixels, picture = opened_input(opened, header, config.preprocessor, config.reduce_for)
    except ImageDecodeError as exc:
        return Failure.of(item, "decode", str(exc))
    finally:
        _decoding.warnings = None
    return Prepared(
        warnings=tuple(kept),
        item=item,
        pixels=pixels,
        content_hash=hashlib.sha256(data).hexdigest(),
        picture=picture,
        read_seconds=read_seconds,
        decode_seconds=time.perf_counter() - read_done,
    )


def model_input(
    data: bytes, preprocessor: Preprocessor, max_pixels: int, reduce_for: int | None
) -> tuple[np.ndarray, Picture]:
    """A file's bytes → the model's uint8 input and what the picture says about itself. Raises
    ``ImageDecodeError`` with the reason a person reads, whatever the decoder raised; the Lambda handler decodes
    through this too."""
    opened, header = opened_header(data, max_pixels)
    return opened_input(opened, header, preprocessor, reduce_for)


def opened_header(data: bytes, max_pixels: int) -> tuple[Image.Image, Header]:
    """The file's header checked (``open_image``) and read; no pixel decoded yet."""
    try:
        opened = open_image(data, max_pixels=max_pixels)
        return opened, Header(opened)
    except (OSError, ValueError, MemoryError) as exc:  # Pillow's last-resort errors on exotic files
        raise ImageDecodeError(f"cannot decode image: {exc}") from None


def opened_input(
    opened: Image.Image, header: Header, preprocessor: Preprocessor, reduce_for: int | None
) -> tuple[np.ndarray, Picture]:
    try:
        image = decode_opened(opened, reduce_for=reduce_for)
        return preprocessor.pixels(image), header.picture(image)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, MemoryError) as exc:  # Pillow's last-resort errors on exotic files
        raise ImageDecodeError(f"cannot decode image: {exc}") from None

"""Test helpers: photo-like images (distinct per seed, any format Pillow writes) and running the real CLI."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

from imgvec.documents import SourceItem
from imgvec.embed.preprocess import Preprocessor
from imgvec.sources.local import LocalFolder


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        w, h = max(2, size[0] // 2), max(2, size[1] // 2)
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(1, w), y0 + rng.integers(1, h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def textured_photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """``photo`` plus what makes real photos hard to shrink: fine periodic detail and sensor-like noise. A reduced
    decode is judged on this, not on smooth gradients that any filter gets right."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(photo(seed, size), dtype=np.float32)
    rows, cols = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(0.005, 0.2, 2)
        pixels += 20 * np.sin(fx * cols + fy * rows)[..., None]
    pixels += rng.normal(0, 10, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def exif_photo(
    seed: int,
    fmt: str = "JPEG",
    *,
    size: tuple[int, int] = (480, 360),
    make: str | None = None,
    model: str | None = None,
    taken: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
    gps_status: str | None = None,
    orientation: int | None = None,
) -> bytes:
    """A photo as a camera or phone writes it: EXIF Make and Model in IFD0, DateTimeOriginal (and its offset) in the
    EXIF IFD, the position as degree/minute/second rationals with N/S and E/W in the GPS IFD. ``fmt``: JPEG, PNG (its
    eXIf chunk), WEBP or HEIF (pillow-heif), as Pillow writes each."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    details = exif.get_ifd(0x8769)
    if taken is not None:
        details[0x9003] = taken
    if offset is not None:
        details[0x9011] = offset
    if gps is not None:
        where = exif.get_ifd(0x8825)
        for (signed, value, ref_tag, value_tag), (positive, negative) in zip(
            ((gps[0], abs(gps[0]), 1, 2), (gps[1], abs(gps[1]), 3, 4)), (("N", "S"), ("E", "W")), strict=True
        ):
            degrees = int(value)
            minutes = int((value - degrees) * 60)
            seconds = round(((value - degrees) * 60 - minutes) * 60, 4)
            where[ref_tag] = positive if signed >= 0 else negative
            where[value_tag] = (float(degrees), float(minutes), seconds)
        if gps_status is not None:
            where[0x0009] = gps_status
    return encode(textured_photo(seed, size), fmt, quality=90, exif=exif.tobytes())


PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.0060)
SYDNEY = (-33.8688, 151.2093)


def camera_and_phone_photos(folder: Path) -> Path:
    """A camera's JPEG in Paris, a phone's HEIC in New York, a phone's JPEG in Sydney (no offset: wall clock), and a
    scan (PNG) with no EXIF at all."""
    (folder / "trips").mkdir(parents=True)
    files = {
        "trips/paris.jpg": exif_photo(
            10, make="Canon", model="Canon EOS R5", taken="2019:05:01 12:00:00", offset="+02:00", gps=PARIS
        ),
        "trips/newyork.heic": exif_photo(
            11, "HEIF", make="Apple", model="iPhone 12 Pro", taken="2021:08:01 10:00:00", offset="-04:00", gps=NEW_YORK
        ),
        "sydney.jpg": exif_photo(12, make="samsung", model="SM-G991B", taken="2019:12:31 23:30:00", gps=SYDNEY),
        "scan.png": encode(textured_photo(13, (480, 360)), "PNG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgvec.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kill_when(run: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 120) -> None:
    """SIGKILL ``run`` as soon as ``ready()`` holds (it must still be running then): a crash at a moment of the
    test's choosing, for the resume tests."""
    try:
        deadline = time.monotonic() + timeout
        while not ready() and run.poll() is None:
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before it could be killed"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()


def assert_children_exit(children: list[psutil.Process], timeout: float = 10.0) -> None:
    """Worker processes of a killed run must not outlive it (they would idle forever, holding memory)."""
    _, alive = psutil.wait_procs(children, timeout=timeout)
    assert not alive, f"worker processes outlived their killed parent: {[p.pid for p in alive]}"


CRASH_SIZE = (13, 17)
HANG_SIZE = (333, 222)


class TrappedPreprocessor:
    """The real preprocessing, except for an image of ``size``, on which the decode worker misbehaves as it would
    on one bad file in real life (``spring``)."""

    size: tuple[int, int]

    def __init__(self, inner: Preprocessor) -> None:
        self.inner = inner
        self.reduce_for = inner.reduce_for

    def pixels(self, image: Image.Image) -> np.ndarray:
        if image.size == self.size:
            self.spring()
        return self.inner.pixels(image)

    def __getattr__(self, name: str) -> object:
        if name == "inner":  # being unpickled in a worker: not set yet
            raise AttributeError(name)
        return getattr(self.inner, name)

    def spring(self) -> None:
        raise NotImplementedError


class CrashingPreprocessor(TrappedPreprocessor):
    """Kills the process decoding an image of CRASH_SIZE, as a decoder segfault or the OOM killer would."""

    size = CRASH_SIZE

    def spring(self) -> None:
        os._exit(70)


class CrashingFolder(LocalFolder):
    """A folder whose files named ``crash-me*`` kill the process that reads them: a Ray worker that dies on one
    image, as on a decoder segfault. Pickled by reference, so a Ray node must be able to import this module."""

    def read(self, item: SourceItem) -> bytes:
        if item.file_name.startswith("crash-me"):
            os._exit(70)
        return super().read(item)


class HangingPreprocessor(TrappedPreprocessor):
    """Stalls the process decoding an image of HANG_SIZE, as a decoder stuck in a loop or a read on a hung share
    would."""

    size = HANG_SIZE

    def spring(self) -> None:
        time.sleep(3600)


class Service:
    """`imgvec serve` as a user starts it: the real CLI in its own process, on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imgvec.cli", "serve", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"imgvec serve exited {self.process.returncode}: {self.process.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("imgvec serve did not listen within 60 s") from None
                time.sleep(0.1)

    def stop(self) -> str:
        """Stop it as systemd would (SIGTERM); returns what it printed."""
        self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output


def worker_fields(bucket: str, key: str, file_path: str, file_size: int) -> dict[str, object]:
    """The eight fields the file-index worker writes for one NAS file mirrored to S3 (no vector, no doc_id)."""
    name = key.rsplit("/", 1)[-1]
    return {
        "file_name": name,
        "file_path": file_path,
        "file_extension": name.rsplit(".", 1)[-1],
        "file_size": file_size,
        "bucket": bucket,
        "file_key": key,
        "s3_url": f"https://{bucket}.s3.amazonaws.com/{key}",
        "indexed_at": "2024-05-01T10:00:00Z",
    }

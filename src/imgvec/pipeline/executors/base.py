"""Where images are read, decoded and (for a cluster) embedded: the one seam between a run and its compute.

The ``Indexer`` keeps what a run keeps (listing, skip rules, run state, failures, counts, the lock) and writes
through the one write path; an executor only turns items into outcomes. What crosses the seam is defined here,
so the write path and the run import nothing of any executor: ``local.py`` hands back pixels for the run's
model, ``ray/`` hands back vectors embedded on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from imgvec.documents import Failure, Picture, SourceItem
from imgvec.embed.base import Embedder
from imgvec.embed.picture import Header
from imgvec.embed.pixels import Pixels
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.base import Source


@dataclass(slots=True)
class Prepared:
    """An item read and decoded here: the pixels the run's model takes, and the hash of the bytes they came from."""

    item: SourceItem
    pixels: Pixels
    """uint8 (3, H, W): numpy from a CPU worker, a tensor on the model's device from a GPU decode lane."""
    content_hash: str
    picture: Picture
    read_seconds: float
    decode_seconds: float
    warnings: tuple[str, ...] = ()
    """What the decoder warned of for this file (corrupt EXIF, odd palettes): logged with the file's path."""


@dataclass(slots=True)
class ForLane:
    """An item read and its header checked by a CPU worker, whose pixels a GPU decode lane decodes
    (``gpu_lane.py``); one the lane refuses after all comes back as itself and a CPU worker decodes it."""

    item: SourceItem
    data: bytes
    content_hash: str
    header: Header
    read_seconds: float
    decode_seconds: float
    """The header's share so far; the lane adds its own."""
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class Embedded:
    """An item embedded elsewhere: its vector and the hash of the bytes it came from."""

    item: SourceItem
    vector: np.ndarray
    content_hash: str
    picture: Picture
    read_seconds: float
    decode_seconds: float
    embed_seconds: float
    """This item's share of its batch's model time."""
    warnings: tuple[str, ...] = ()


Outcome = Prepared | Embedded | Failure
"""What an executor yields per item: pixels for the local model, a vector, or the item's failure."""


@dataclass(slots=True)
class ExecutorStatus:
    """What progress shows of the executor. ``workers``: per worker (a Ray actor), its node, whether it is alive,
    images done and images/s; None for the local executor, whose decode workers hold no model."""

    executor: str
    runtime: str
    runtime_reason: str
    workers_alive: int
    workers: list[dict[str, Any]] | None = None
    bytes_per_image: float | None = None
    """Bytes sent and received between driver and workers per image (Ray)."""
    decode_workers: int | None = None
    """This machine's decode worker processes (local); None where the workers decode for themselves."""
    decode_lanes: dict[str, Any] | None = None
    """With a GPU decode lane (``gpu_lane.py``): the GPU's share of the files, files sent to each decoder, their
    measured rates, files the GPU decoded and refused. None without one."""
    invocations: int | None = None
    """Lambda only: invocations so far (throttled and failed ones included)."""
    throttles: int | None = None
    """Lambda only: invocations refused for want of concurrency (429)."""
    concurrency: int | None = None
    """Lambda only: invocations allowed at once now (halved on a throttle, grown back by one per success)."""
    function_seconds_per_image: float | None = None
    """Lambda only: invocation time summed over the images embedded (what Lambda bills per image, near enough)."""


class Executor(Protocol):
    def outcomes(self, items: Iterable[SourceItem]) -> Iterator[Outcome]:
        """One outcome per item, in any order; every item in hand is finished when ``items`` ends, so a stop
        ends the run after the work already sent."""
        ...

    def status(self) -> ExecutorStatus: ...

    def close(self) -> None: ...


ExecutorFactory = Callable[[Source, Embedder, PipelineOptions], Executor]
"""Builds a session's executor; ``wiring.executor_for`` chooses which (``--executor``), the run never knows."""

"""``--executor ray``: the run's images read, decoded and embedded by actors on a Ray cluster.

The driver (this process) keeps everything a run keeps and sends batches of item locations to actors
(``ray_worker.EmbedWorker``), at most ``IN_FLIGHT_PER_WORKER`` per actor, so its memory stays flat whatever the
collection's size. Vectors come back and go through the one write path; a run killed at any moment resumes as
any run does (the actors die with their driver, and the store's upserts are idempotent by document id).

A worker that dies (its node lost, the OOM killer, a decoder crash) has its batches run again: each item of a
batch that was on it is sent alone to a worker with nothing else to do, so the one image that kills a worker
twice is recorded as a failure instead of being retried forever, and a lost node costs only a retry. A dead
worker is replaced; one that cannot start (the model missing on its node) stops the run with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import socket
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from imgvec.documents import Failure, SourceItem
from imgvec.embed.base import Embedder
from imgvec.embed.cpu import usable_cores
from imgvec.errors import ImgvecError, UsageError, reason
from imgvec.pipeline.executor import Embedded, ExecutorStatus
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.ray_worker import CALLS_AT_ONCE, EmbedWorker
from imgvec.settings import Settings
from imgvec.sources.base import Source

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = CALLS_AT_ONCE + 1
"""Batches sent to one actor and not yet back: the two it works on and one waiting, so it never idles."""
START_SECONDS = 300.0
"""How long the run waits with no worker able to work (all starting, or lost with no room for another) before it
stops: a first start may load a model and measure the runtimes of a new CPU."""
FRUITLESS_DEATHS = 3
"""Worker deaths beyond the workers' count, in a row without a finished batch, after which the workers are the
problem (every new one dies), not the images."""
OBJECT_STORE_BYTES = 256 << 20
"""The object store of a Ray started for the run: batches and vectors are small, and Ray's default (30 % of RAM
in /dev/shm) would fall back to a slow disk where /dev/shm is a container's 64 MB."""
FORWARDED_ENVIRONMENT = ("AWS_", "HF_", "HUGGINGFACE_", "OPENCLIP_")
"""Variables of the driver's environment the actors get too: S3 credentials and endpoint, model caches."""
WORKER_DIED = "the Ray worker died twice on this image (a crash, or out of memory, or its node lost)"
CONNECT_SECONDS = 5.0
"""How long the first connection to a cluster's head may take before it is called unreachable."""
RAY_HELP = "install Ray with: pip install 'imgvec[ray]'"


class RayWorkersError(ImgvecError):
    """The Ray workers cannot run (no cluster, no room, every new worker dies): no image is to blame."""


def import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage to its makers unless told not to
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray: {RAY_HELP}") from None
    return ray


@dataclass(slots=True, eq=False)
class _Worker:
    name: str
    handle: Any
    ready_ref: Any
    node: str = ""
    """The node's IP address and the start of its id (several nodes may share a machine)."""
    alive: bool = False
    lost: bool = False
    started: float = 0.0
    """When its first batch was sent: its rate is over its working time, not its start-up."""
    images: int = 0
    in_flight: int = 0
    alone: bool = False
    """Running a suspect item by itself: nothing else is sent until it is back."""


@dataclass(slots=True, eq=False)
class _Task:
    items: list[SourceItem]
    worker: _Worker
    sent: float
    alone: bool = False


@dataclass(slots=True)
class _Plan:
    workers: int
    cpus: float
    gpus: float


@dataclass(slots=True)
class _Counts:
    sent_bytes: int = 0
    received_bytes: int = 0
    images: int = 0
    deaths_in_a_row: int = 0
    deaths: dict[str, int] = field(default_factory=dict)


class RayExecutor:
    """Actors on a Ray cluster: ``--ray-address`` (or a Ray started here), ``--ray-workers``,
    ``--ray-gpus-per-worker``."""

    def __init__(
        self, source: Source, embedder: Embedder, options: PipelineOptions, *, settings: Settings, model: str
    ) -> None:
        self.ray = import_ray()
        self.embedder = embedder
        self.options = options
        self._workers: list[_Worker] = []
        self._started = 0
        self._in_flight: dict[Any, _Task] = {}
        self._suspects: deque[SourceItem] = deque()
        self._counts = _Counts()
        self._runtime = ("", "")
        """What the first worker to start reported: its runtime and why."""
        self._idle_since = time.monotonic()
        self._owns_ray = False
        # Ray prints cluster events (a node lost, a worker killed) to stdout, which is `--json`'s channel: they go
        # to stderr while the executor runs, where the run's other messages are.
        self._quiet_stdout = contextlib.redirect_stdout(sys.stderr)
        self._quiet_stdout.__enter__()
        try:
            self._connect(options.ray_address)
            self._plan = self._plan_workers()
        except BaseException:
            self.close()
            raise
        gpus = self._plan.gpus
        self._actor = self.ray.remote(EmbedWorker).options(
            num_cpus=self._plan.cpus,
            num_gpus=gpus,
            max_restarts=0,  # a dead worker is replaced here, where its batches are known
            max_task_retries=0,
            max_concurrency=CALLS_AT_ONCE,
        )
        self._arguments = (settings, model, source, options)
        self._keywords = {"threads": max(1, int(self._plan.cpus)), "device": "cuda" if gpus > 0 else "cpu"}

    # -- the cluster ----------------------------------------------------------------------------------

    def _connect(self, address: str | None) -> None:
        ray = self.ray
        if ray.is_initialized():  # a library user (or a benchmark) connected already
            return
        forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENVIRONMENT)}
        common: dict[str, Any] = {
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            "runtime_env": {"env_vars": forwarded} if forwarded else None,
        }
        local = {
            "address": "local",  # a new instance, even where a cluster runs that ray.init() would join
            "num_cpus": usable_cores(),
            "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES,
            "_plasma_directory": _object_store_directory(),
        }
        if address is not None:
            _check_reachable(address)
        try:
            with warnings.catch_warnings():
                # Ray starts its processes by fork and exec; LanceDB warns in each child of a fork, though the
                # child runs none of its code before exec.
                warnings.filterwarnings("ignore", message="lancedb fork support")
                ray.init(**(local if address is None else {"address": address}), **common)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            where = f"the Ray cluster at {address}" if address else "a Ray instance on this machine"
            raise RayWorkersError(f"cannot start or reach {where}: {reason(exc)} (`ray status` says more)") from None
        self._owns_ray = True

    def _plan_workers(self) -> _Plan:
        """As many workers as the cluster holds: a GPU share each with ``--ray-gpus-per-worker``, else the CPUs of
        the smallest node each (one per node on a uniform cluster), or an even share with ``--ray-workers``."""
        nodes = [node["Resources"] for node in self.ray.nodes() if node.get("Alive")]
        cpus = [resources.get("CPU", 0.0) for resources in nodes if resources.get("CPU", 0.0) >= 1]
        asked, gpus = self.options.ray_workers, self.options.ray_gpus_per_worker
        if gpus > 0:
            total = sum(resources.get("GPU", 0.0) for resources in nodes)
            if total < gpus:
                raise RayWorkersError(f"--ray-gpus-per-worker {gpus:g}: the Ray cluster has {total:g} GPUs")
            return _Plan(asked or max(1, int(total // gpus)), 1.0, gpus)
        if not cpus:
            raise RayWorkersError("the Ray cluster has no node with a CPU to run a worker on: `ray status`")
        if asked is None:
            each = min(cpus)
            return _Plan(sum(int(count // each) for count in cpus), each, 0.0)
        return _Plan(asked, max(1.0, min(min(cpus), float(int(sum(cpus) // asked)))), 0.0)

    def _start_worker(self) -> None:
        self._started += 1
        handle = self._actor.remote(*self._arguments, **self._keywords)
        self._workers.append(_Worker(f"w{self._started}", handle, handle.ready.remote()))

    def _worker_ready(self, worker: _Worker) -> None:
        try:
            info = self.ray.get(worker.ready_ref)
        except self.ray.exceptions.RayError as exc:
            if getattr(exc, "actor_init_failed", False) or isinstance(exc, self.ray.exceptions.RayTaskError):
                raise RayWorkersError(f"a Ray worker could not start: {_cause(exc)}") from None
            self._lose(worker, exc)
            return
        import imgvec

        if info["version"] != imgvec.__version__:
            raise RayWorkersError(
                f"the Ray worker on {info['node']} runs imgvec {info['version']}, this is {imgvec.__version__}: "
                "install the same version on every node"
            )
        self.embedder.identity.require_compatible(info["identity"], action=f"embed on the Ray worker at {info['node']}")
        worker.node, worker.alive = f"{info['node']} {info['node_id']}", True
        self._runtime = (info["runtime"], info["runtime_reason"])

    def _lose(self, worker: _Worker, exc: BaseException) -> None:
        """A worker is gone: replace it, unless new workers keep dying without finishing anything."""
        if worker.lost:
            return
        worker.lost, worker.alive = True, False
        log.info("Ray worker %s on %s lost: %s", worker.name, worker.node or "?", _cause(exc))
        with contextlib.suppress(Exception):  # gone already, most likely
            self.ray.kill(worker.handle, no_restart=True)
        self._counts.deaths_in_a_row += 1
        if self._counts.deaths_in_a_row > FRUITLESS_DEATHS + self._plan.workers:
            raise RayWorkersError(
                f"Ray workers died {self._counts.deaths_in_a_row} times in a row without finishing a batch "
                f"(last: {_cause(exc)}): check the nodes' memory and logs (`ray status`, /tmp/ray/session_latest/logs)"
            )
        self._start_worker()

    # -- the run --------------------------------------------------------------------------------------

    def outcomes(self, items: Iterable[SourceItem]) -> Iterator[Embedded | Failure]:
        batches = _batched(iter(items), self.options.batch_size)
        more = True
        while True:
            if more and not self._workers:
                first = next(batches, None)  # the actors start once there is work: a run with none starts none
                if first is None:
                    return
                for _ in range(self._plan.workers):
                    self._start_worker()
                batches = _prepend(first, batches)
            more = self._dispatch(batches, more)
            if not more and not self._in_flight and not self._suspects:
                return
            yield from self._collect()

    def _dispatch(self, batches: Iterator[list[SourceItem]], more: bool) -> bool:
        """Send work to workers with room, the least busy first (a worker that is never sent work would never be
        found lost); suspects first, each alone on an idle worker. Returns whether ``batches`` may have more."""
        ready = [worker for worker in self._workers if worker.alive and not worker.alone]
        if self._suspects:  # the others drain meanwhile, so that suspects find an idle worker
            for worker in ready:
                if self._suspects and worker.in_flight == 0:
                    self._send(worker, [self._suspects.popleft()], alone=True)
            return more
        while more:
            room = [worker for worker in ready if worker.in_flight < IN_FLIGHT_PER_WORKER]
            if not room:
                break
            batch = next(batches, None)
            if batch is None:
                return False
            self._send(min(room, key=lambda worker: worker.in_flight), batch)
        return more

    def _send(self, worker: _Worker, items: list[SourceItem], *, alone: bool = False) -> None:
        self._counts.sent_bytes += len(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
        ref = worker.handle.embed.remote(items)
        worker.started = worker.started or time.monotonic()
        self._in_flight[ref] = _Task(items, worker, time.monotonic(), alone)
        worker.in_flight += 1
        worker.alone = alone

    def _collect(self) -> Iterator[Embedded | Failure]:
        """Wait a moment for a finished batch or a worker that became ready, and take what came."""
        starting = {worker.ready_ref: worker for worker in self._workers if not worker.alive and not worker.lost}
        waiting = [*self._in_flight, *starting]
        if waiting:
            done, _ = self.ray.wait(waiting, num_returns=1, timeout=1.0)
        else:
            done = []
            time.sleep(0.2)
        for ref in done:
            if ref in starting:
                self._worker_ready(starting[ref])
            else:
                yield from self._finish(ref, self._in_flight.pop(ref))
        self._stop_stuck()
        self._check_workers()

    def _finish(self, ref: Any, task: _Task) -> Iterator[Embedded | Failure]:
        worker = task.worker
        worker.in_flight -= 1
        worker.alone = False
        try:
            results: list[Embedded | Failure] = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # our code raised in the actor: no retry will help
            raise RayWorkersError(f"a Ray worker failed: {_cause(exc)}") from None
        except self.ray.exceptions.RayError as exc:  # the actor or its node is gone
            self._lose(worker, exc)
            yield from self._suspect(task)
            return
        self._counts.received_bytes += len(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))
        self._counts.images += len(task.items)
        self._counts.deaths_in_a_row = 0
        worker.images += len(task.items)
        yield from results

    def _suspect(self, task: _Task) -> Iterator[Failure]:
        """The items of a batch whose worker died: each runs again alone; one that was alone already and has
        now died twice is the image's failure."""
        for item in task.items:
            deaths = self._counts.deaths[item.uri] = self._counts.deaths.get(item.uri, 0) + 1
            if task.alone and deaths >= 2:
                del self._counts.deaths[item.uri]
                yield Failure.of(item, "worker", WORKER_DIED)
            else:
                self._suspects.append(item)

    def _stop_stuck(self) -> None:
        """A batch still out after ``file_timeout`` has a stuck file: its worker is killed, so the batch's items
        run again alone and the stuck one fails by itself."""
        now = time.monotonic()
        for task in list(self._in_flight.values()):
            if now - task.sent > self.options.file_timeout and not task.worker.lost:
                log.info(
                    "Ray worker %s: a batch took over %gs, stopping it", task.worker.name, self.options.file_timeout
                )
                with contextlib.suppress(Exception):
                    self.ray.kill(task.worker.handle, no_restart=True)
                task.sent = now  # the kill surfaces as the batch's error; do not kill twice meanwhile

    def _check_workers(self) -> None:
        """Stop the run when no worker has been able to work for ``START_SECONDS``."""
        now = time.monotonic()
        if any(worker.alive for worker in self._workers) or not self._workers:
            self._idle_since = now
        elif now - self._idle_since > START_SECONDS:
            each = f"{self._plan.cpus:g} CPUs" + (f" and {self._plan.gpus:g} GPUs" if self._plan.gpus else "")
            raise RayWorkersError(
                f"no Ray worker has been running for {START_SECONDS:g}s: the cluster has no room for a worker "
                f"({each} each) or its nodes cannot start one; see `ray status`"
            )

    # -- progress -------------------------------------------------------------------------------------

    def status(self) -> ExecutorStatus:
        now = time.monotonic()
        workers = [
            {
                "worker": worker.name,
                "node": worker.node,
                "alive": worker.alive,
                "images": worker.images,
                "rate": round(worker.images / max(now - worker.started, 1e-9), 2) if worker.started else 0.0,
            }
            for worker in self._workers
            if not worker.lost or worker.images
        ]
        counts = self._counts
        per_image = (counts.sent_bytes + counts.received_bytes) / counts.images if counts.images else None
        return ExecutorStatus(
            "ray",
            self._runtime[0],
            self._runtime[1],
            workers_alive=sum(1 for worker in self._workers if worker.alive),
            workers=workers,
            bytes_per_image=round(per_image, 1) if per_image is not None else None,
            decode_workers=None,
        )

    def close(self) -> None:
        for worker in self._workers:  # kept, stopped, for the run's last progress
            worker.alive = False
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle, no_restart=True)
        if self._owns_ray:
            self.ray.shutdown()
        self._quiet_stdout.__exit__(None, None, None)


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes; one TCP connection says within seconds whether it is there."""
    location = address.removeprefix("ray://")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayWorkersError(
            f"cannot reach the Ray cluster at {address} ({reason(exc)}): is Ray running there "
            "(`ray start --head`), and is the port open to this machine?"
        ) from None


def _batched(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    while batch := list(islice(items, size)):
        yield batch


def _prepend(first: list[SourceItem], rest: Iterator[list[SourceItem]]) -> Iterator[list[SourceItem]]:
    yield first
    yield from rest


def _object_store_directory() -> str | None:
    """/dev/shm when it has room for the object store, else the temporary directory (said, not warned by Ray)."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return tempfile.gettempdir()
    return None if stats.f_bavail * stats.f_frsize > 2 * OBJECT_STORE_BYTES else tempfile.gettempdir()


def _cause(exc: BaseException) -> str:
    """Ray's error text without its traceback: the first line that says something."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("Traceback", " "))]
    # The actor's exception as Ray words it, "imgvec.errors.ModelSpecError: …": the words after the type.
    return re.sub(r"^[\w.]+(?:Error|Exception): ", "", lines[-1]) if lines else type(exc).__name__

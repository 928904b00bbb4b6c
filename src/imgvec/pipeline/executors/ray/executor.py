"""``--executor ray``: the run's images read, decoded and embedded by actors on a Ray cluster.

The driver (this process) keeps everything a run keeps and sends batches of item locations to actors
(``actor.EmbedWorker``), at most ``IN_FLIGHT_PER_WORKER`` per actor, so its memory stays flat whatever the
collection's size. Vectors come back and go through the one write path; a run killed at any moment resumes as
any run does (the actors die with their driver, and the store's upserts are idempotent by document id).

This module does what touches Ray (start actors, send, wait, kill); ``scheduler.py`` decides: a worker that dies
(its node lost, the OOM killer, a decoder crash) has its batches run again, each item alone on a worker with
nothing else to do, so the one image that kills a worker twice is recorded as a failure instead of being retried
forever, and a lost node costs only a retry. A dead worker is replaced; one that cannot start (the model missing
on its node) stops the run with one line.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import Any

from imgvec.documents import Failure, SourceItem
from imgvec.embed.base import Embedder
from imgvec.embed.loading import ModelConfig
from imgvec.errors import RayWorkersError
from imgvec.pipeline.executors.base import Embedded, ExecutorStatus
from imgvec.pipeline.executors.ray.actor import EmbedWorker
from imgvec.pipeline.executors.ray.cluster import cause_of, connect, import_ray, live_nodes
from imgvec.pipeline.executors.ray.scheduler import CALLS_AT_ONCE, Scheduler, Task, Worker, plan_workers
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.base import Source

log = logging.getLogger(__name__)


class RayExecutor:
    """Actors on a Ray cluster: ``--ray-address`` (or a Ray started here), ``--ray-workers``,
    ``--ray-gpus-per-worker``. ``model``: what each actor loads (its threads and device are set here, per actor)."""

    def __init__(self, source: Source, embedder: Embedder, options: PipelineOptions, *, model: ModelConfig) -> None:
        self.ray = import_ray()
        self.embedder = embedder
        self.options = options
        self._sent_bytes = 0
        self._received_bytes = 0
        self._runtime = ("", "")
        """What the first worker to start reported: its runtime and why."""
        self._owns_ray = False
        self._started: list[Worker] = []
        """Every worker started, lost ones included (``close`` stops them all)."""
        # Ray prints cluster events (a node lost, a worker killed) to stdout, which is `--json`'s channel: they go
        # to stderr while the executor runs, where the run's other messages are.
        self._quiet_stdout = contextlib.redirect_stdout(sys.stderr)
        self._quiet_stdout.__enter__()
        try:
            self._owns_ray = connect(self.ray, options.ray_address)
            plan = plan_workers(live_nodes(self.ray), options.ray_workers, options.ray_gpus_per_worker)
        except BaseException:
            self.close()
            raise
        self._scheduler = Scheduler(plan, workers=self._started)
        self._actor = self.ray.remote(EmbedWorker).options(
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            max_restarts=0,  # a dead worker is replaced here, where its batches are known
            max_task_retries=0,
            max_concurrency=CALLS_AT_ONCE,
        )
        each = replace(model, threads=max(1, int(plan.cpus)), device="cuda" if plan.gpus > 0 else "cpu")
        self._arguments = (each, source, options)

    # -- workers --------------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        handle = self._actor.remote(*self._arguments)
        self._scheduler.add(Worker(self._scheduler.next_name(), handle, handle.ready.remote()))

    def _worker_ready(self, worker: Worker) -> None:
        try:
            info = self.ray.get(worker.ready_ref)
        except self.ray.exceptions.RayError as exc:
            if getattr(exc, "actor_init_failed", False) or isinstance(exc, self.ray.exceptions.RayTaskError):
                raise RayWorkersError(f"a Ray worker could not start: {cause_of(exc)}") from None
            self._lose(worker, exc)
            return
        import imgvec

        if info["version"] != imgvec.__version__:
            raise RayWorkersError(
                f"the Ray worker on {info['node']} runs imgvec {info['version']}, this is {imgvec.__version__}: "
                "install the same version on every node"
            )
        self.embedder.identity.require_compatible(info["identity"], action=f"embed on the Ray worker at {info['node']}")
        self._scheduler.ready(worker, f"{info['node']} {info['node_id']}")
        self._runtime = (info["runtime"], info["runtime_reason"])

    def _lose(self, worker: Worker, exc: BaseException) -> None:
        """A worker is gone: replace it, unless new workers keep dying without finishing anything."""
        cause = cause_of(exc)
        if not self._scheduler.lose(worker, cause):
            return
        log.info("Ray worker %s on %s lost: %s", worker.name, worker.node or "?", cause)
        with contextlib.suppress(Exception):  # gone already, most likely
            self.ray.kill(worker.handle, no_restart=True)
        self._start_worker()

    # -- the run --------------------------------------------------------------------------------------

    def outcomes(self, items: Iterable[SourceItem]) -> Iterator[Embedded | Failure]:
        batches = _batched(iter(items), self.options.batch_size)
        more = True
        scheduler = self._scheduler
        while True:
            if more and not scheduler.workers:
                first = next(batches, None)  # the actors start once there is work: a run with none starts none
                if first is None:
                    return
                for _ in range(scheduler.plan.workers):
                    self._start_worker()
                batches = _prepend(first, batches)
            more = scheduler.dispatch(batches, more, self._send)
            if scheduler.done(more):
                return
            yield from self._collect()

    def _send(self, worker: Worker, items: list[SourceItem]) -> Any:
        self._sent_bytes += len(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
        return worker.handle.embed.remote(items)

    def _collect(self) -> Iterator[Embedded | Failure]:
        """Wait a moment for a finished batch or a worker that became ready, and take what came."""
        scheduler = self._scheduler
        starting = scheduler.starting()
        waiting = [*scheduler.in_flight, *starting]
        if waiting:
            done, _ = self.ray.wait(waiting, num_returns=1, timeout=1.0)
        else:
            done = []
            time.sleep(0.2)
        for ref in done:
            if ref in starting:
                self._worker_ready(starting[ref])
            else:
                yield from self._finish(ref, scheduler.returned(ref))
        self._stop_stuck()
        scheduler.check_idle()

    def _finish(self, ref: Any, task: Task) -> Iterator[Embedded | Failure]:
        try:
            results: list[Embedded | Failure] = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # our code raised in the actor: no retry will help
            raise RayWorkersError(f"a Ray worker failed: {cause_of(exc)}") from None
        except self.ray.exceptions.RayError as exc:  # the actor or its node is gone
            self._lose(task.worker, exc)
            yield from self._scheduler.suspect(task)
            return
        self._received_bytes += len(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))
        self._scheduler.finished(task)
        yield from results

    def _stop_stuck(self) -> None:
        """A batch still out after ``file_timeout`` has a stuck file: its worker is killed, so the batch's items
        run again alone and the stuck one fails by itself."""
        for task in self._scheduler.stuck(self.options.file_timeout):
            log.info("Ray worker %s: a batch took over %gs, stopping it", task.worker.name, self.options.file_timeout)
            with contextlib.suppress(Exception):
                self.ray.kill(task.worker.handle, no_restart=True)

    # -- progress -------------------------------------------------------------------------------------

    def status(self) -> ExecutorStatus:
        images = self._scheduler.counts.images
        per_image = (self._sent_bytes + self._received_bytes) / images if images else None
        return ExecutorStatus(
            "ray",
            self._runtime[0],
            self._runtime[1],
            workers_alive=self._scheduler.alive(),
            workers=self._scheduler.rows(),
            bytes_per_image=round(per_image, 1) if per_image is not None else None,
            decode_workers=None,
        )

    def close(self) -> None:
        for worker in self._started:
            worker.alive = False  # kept, stopped, for the run's last progress
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle, no_restart=True)
        if self._owns_ray:
            self.ray.shutdown()
        self._quiet_stdout.__exit__(None, None, None)


def _batched(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    while batch := list(islice(items, size)):
        yield batch


def _prepend(first: list[SourceItem], rest: Iterator[list[SourceItem]]) -> Iterator[list[SourceItem]]:
    yield first
    yield from rest

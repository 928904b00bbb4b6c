"""Which Ray worker gets which batch, and what a lost worker costs: the executor's decisions, with no Ray in them.

``RayExecutor`` talks to the cluster; everything it decides lives here, so it is tested without one
(``tests/test_ray_scheduler.py``): how many workers the cluster holds, that work goes to the least busy worker and
never more than ``IN_FLIGHT_PER_WORKER`` batches to one, that the items of a lost worker's batch run again each
alone, that an item which kills a worker twice is that item's failure, and when deaths or idleness mean the
workers themselves are the problem.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from imgvec.documents import Failure, SourceItem
from imgvec.errors import RayWorkersError

CALLS_AT_ONCE = 2
"""Batches an actor works on together: one decoding while the other is in the model."""
IN_FLIGHT_PER_WORKER = CALLS_AT_ONCE + 1
"""Batches sent to one actor and not yet back: the two it works on and one waiting, so it never idles."""
START_SECONDS = 300.0
"""How long the run waits with no worker able to work (all starting, or lost with no room for another) before it
stops: a first start may load a model and measure the runtimes of a new CPU."""
FRUITLESS_DEATHS = 3
"""Worker deaths beyond the workers' count, in a row without a finished batch, after which the workers are the
problem (every new one dies), not the images."""
WORKER_DIED = "the Ray worker died twice on this image (a crash, or out of memory, or its node lost)"


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    workers: int
    cpus: float
    """CPUs each worker asks Ray for."""
    gpus: float


def plan_workers(nodes: list[dict[str, float]], asked: int | None, gpus_per_worker: float) -> WorkerPlan:
    """As many workers as the cluster holds: a GPU share each with ``--ray-gpus-per-worker``, else the CPUs of
    the smallest node each (one per node on a uniform cluster), or an even share with ``--ray-workers``.
    ``nodes``: the resources of each live node, as Ray reports them."""
    cpus = [resources.get("CPU", 0.0) for resources in nodes if resources.get("CPU", 0.0) >= 1]
    if gpus_per_worker > 0:
        total = sum(resources.get("GPU", 0.0) for resources in nodes)
        if total < gpus_per_worker:
            raise RayWorkersError(f"--ray-gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {total:g} GPUs")
        return WorkerPlan(asked or max(1, int(total // gpus_per_worker)), 1.0, gpus_per_worker)
    if not cpus:
        raise RayWorkersError("the Ray cluster has no node with a CPU to run a worker on: `ray status`")
    if asked is None:
        each = min(cpus)
        return WorkerPlan(sum(int(count // each) for count in cpus), each, 0.0)
    return WorkerPlan(asked, max(1.0, min(min(cpus), float(int(sum(cpus) // asked)))), 0.0)


@dataclass(slots=True, eq=False)
class Worker:
    name: str
    handle: Any
    """The actor (Ray's handle; anything in tests)."""
    ready_ref: Any
    """What answers once the actor has loaded its model."""
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
class Task:
    items: list[SourceItem]
    worker: Worker
    sent: float
    alone: bool = False


@dataclass(slots=True)
class Counts:
    images: int = 0
    deaths_in_a_row: int = 0
    deaths: dict[str, int] = field(default_factory=dict)
    """Per item (its URI): how many workers died while it was on them."""


Send = Callable[[Worker, list[SourceItem]], Any]
"""Sends a batch to a worker and returns what its result will be found by (a Ray object ref)."""


class Scheduler:
    def __init__(
        self, plan: WorkerPlan, *, workers: list[Worker] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``workers``: the list to keep them in (the executor's own, which it stops on close)."""
        self.plan = plan
        self.clock = clock
        self.workers: list[Worker] = workers if workers is not None else []
        self.in_flight: dict[Any, Task] = {}
        self.suspects: deque[SourceItem] = deque()
        self.counts = Counts()
        self._named = 0
        self._idle_since = clock()

    # -- workers ---------------------------------------------------------------------------------------

    def next_name(self) -> str:
        self._named += 1
        return f"w{self._named}"

    def add(self, worker: Worker) -> None:
        self.workers.append(worker)

    def starting(self) -> dict[Any, Worker]:
        """Workers not ready yet, by what will answer when they are."""
        return {worker.ready_ref: worker for worker in self.workers if not worker.alive and not worker.lost}

    def ready(self, worker: Worker, node: str) -> None:
        worker.node, worker.alive = node, True

    def lose(self, worker: Worker, cause: str) -> bool:
        """A worker is gone. True: replace it (False: it was known lost already). Raises when new workers keep
        dying without finishing anything."""
        if worker.lost:
            return False
        worker.lost, worker.alive = True, False
        self.counts.deaths_in_a_row += 1
        if self.counts.deaths_in_a_row > FRUITLESS_DEATHS + self.plan.workers:
            raise RayWorkersError(
                f"Ray workers died {self.counts.deaths_in_a_row} times in a row without finishing a batch "
                f"(last: {cause}): check the nodes' memory and logs (`ray status`, /tmp/ray/session_latest/logs)"
            )
        return True

    # -- batches ---------------------------------------------------------------------------------------

    def dispatch(self, batches: Iterator[list[SourceItem]], more: bool, send: Send) -> bool:
        """Send work to workers with room, the least busy first (a worker that is never sent work would never be
        found lost); suspects first, each alone on an idle worker. Returns whether ``batches`` may have more."""
        ready = [worker for worker in self.workers if worker.alive and not worker.alone]
        if self.suspects:  # the others drain meanwhile, so that suspects find an idle worker
            for worker in ready:
                if self.suspects and worker.in_flight == 0:
                    self._send(worker, [self.suspects.popleft()], send, alone=True)
            return more
        while more:
            room = [worker for worker in ready if worker.in_flight < IN_FLIGHT_PER_WORKER]
            if not room:
                break
            batch = next(batches, None)
            if batch is None:
                return False
            self._send(min(room, key=lambda worker: worker.in_flight), batch, send)
        return more

    def _send(self, worker: Worker, items: list[SourceItem], send: Send, *, alone: bool = False) -> None:
        ref = send(worker, items)
        now = self.clock()
        worker.started = worker.started or now
        self.in_flight[ref] = Task(items, worker, now, alone)
        worker.in_flight += 1
        worker.alone = alone

    def returned(self, ref: Any) -> Task:
        """A batch is back (done, or its worker gone): the worker has room again."""
        task = self.in_flight.pop(ref)
        task.worker.in_flight -= 1
        task.worker.alone = False
        return task

    def finished(self, task: Task) -> None:
        self.counts.images += len(task.items)
        self.counts.deaths_in_a_row = 0
        task.worker.images += len(task.items)

    def suspect(self, task: Task) -> list[Failure]:
        """The items of a batch whose worker died: each runs again alone; one that was alone already and has
        now died twice is the image's failure (returned)."""
        failures = []
        for item in task.items:
            deaths = self.counts.deaths[item.uri] = self.counts.deaths.get(item.uri, 0) + 1
            if task.alone and deaths >= 2:
                del self.counts.deaths[item.uri]
                failures.append(Failure.of(item, "worker", WORKER_DIED))
            else:
                self.suspects.append(item)
        return failures

    def stuck(self, timeout: float) -> list[Task]:
        """Batches out for longer than ``timeout`` on a worker not yet known lost: each has a stuck file, and its
        worker is to be killed. Each is reported once per ``timeout`` (the kill surfaces as the batch's error)."""
        now = self.clock()
        found = [task for task in self.in_flight.values() if now - task.sent > timeout and not task.worker.lost]
        for task in found:
            task.sent = now
        return found

    def done(self, more: bool) -> bool:
        return not more and not self.in_flight and not self.suspects

    def check_idle(self) -> None:
        """Raises when no worker has been able to work for ``START_SECONDS``."""
        now = self.clock()
        if any(worker.alive for worker in self.workers) or not self.workers:
            self._idle_since = now
        elif now - self._idle_since > START_SECONDS:
            each = f"{self.plan.cpus:g} CPUs" + (f" and {self.plan.gpus:g} GPUs" if self.plan.gpus else "")
            raise RayWorkersError(
                f"no Ray worker has been running for {START_SECONDS:g}s: the cluster has no room for a worker "
                f"({each} each) or its nodes cannot start one; see `ray status`"
            )

    def rows(self) -> list[dict[str, Any]]:
        """Per worker, for progress: its node, whether it is alive, images done and images/s."""
        now = self.clock()
        return [
            {
                "worker": worker.name,
                "node": worker.node,
                "alive": worker.alive,
                "images": worker.images,
                "rate": round(worker.images / max(now - worker.started, 1e-9), 2) if worker.started else 0.0,
            }
            for worker in self.workers
            if not worker.lost or worker.images
        ]

    def alive(self) -> int:
        return sum(1 for worker in self.workers if worker.alive)

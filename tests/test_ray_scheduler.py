"""The Ray executor's decisions, without a cluster: planning, dispatch, a lost worker's batches, stuck batches,
and when the workers themselves are the problem. ``tests/test_ray.py`` runs the same executor on a real cluster."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import pytest

from imgvec.documents import SourceItem
from imgvec.errors import RayWorkersError
from imgvec.pipeline.executors.ray.scheduler import (
    FRUITLESS_DEATHS,
    IN_FLIGHT_PER_WORKER,
    START_SECONDS,
    WORKER_DIED,
    Scheduler,
    Worker,
    WorkerPlan,
    plan_workers,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def items(n: int, start: int = 0) -> list[SourceItem]:
    return [
        SourceItem(f"/photos/{i}.jpg", f"/photos/{i}.jpg", f"{i}.jpg", "jpg", file_size=1, mtime=0.0)
        for i in range(start, start + n)
    ]


def batches_of(n_batches: int, size: int = 4) -> Iterator[list[SourceItem]]:
    return iter([items(size, start=b * size) for b in range(n_batches)])


class Sent:
    """The transport: records what went where, and answers with a fresh reference each time."""

    def __init__(self) -> None:
        self.log: list[tuple[str, list[str]]] = []
        self._refs = count()

    def __call__(self, worker: Worker, batch: list[SourceItem]) -> int:
        self.log.append((worker.name, [item.uri for item in batch]))
        return next(self._refs)


def scheduler_with(workers: int, clock: Clock | None = None) -> Scheduler:
    scheduler = Scheduler(WorkerPlan(workers, 1.0, 0.0), clock=clock or Clock())
    for _ in range(workers):
        worker = Worker(scheduler.next_name(), handle=None, ready_ref=object())
        scheduler.add(worker)
        scheduler.ready(worker, "10.0.0.1 abc")
    return scheduler


def test_plan_fills_the_cluster_by_its_smallest_node_or_by_gpus() -> None:
    nodes = [{"CPU": 8.0}, {"CPU": 8.0}, {"CPU": 4.0}]
    assert plan_workers(nodes, None, 0.0) == WorkerPlan(2 + 2 + 1, 4.0, 0.0)
    assert plan_workers(nodes, 4, 0.0) == WorkerPlan(4, 4.0, 0.0)  # 20 CPUs // 4 = 5, capped by the smallest node
    assert plan_workers(nodes, 40, 0.0) == WorkerPlan(40, 1.0, 0.0)  # never less than one CPU each
    assert plan_workers([{"CPU": 16.0, "GPU": 2.0}], None, 0.5) == WorkerPlan(4, 1.0, 0.5)
    with pytest.raises(RayWorkersError, match="--ray-gpus-per-worker 1: the Ray cluster has 0 GPUs"):
        plan_workers(nodes, None, 1.0)
    with pytest.raises(RayWorkersError, match="no node with a CPU"):
        plan_workers([{"CPU": 0.5}], None, 0.0)


def test_work_goes_to_the_least_busy_worker_and_never_more_than_the_bound() -> None:
    scheduler, send = scheduler_with(3), Sent()
    more = scheduler.dispatch(batches_of(20), True, send)
    assert more  # 20 batches cannot all be out at once
    per_worker = {name: sum(1 for sent, _ in send.log if sent == name) for name in ("w1", "w2", "w3")}
    assert per_worker == {"w1": IN_FLIGHT_PER_WORKER, "w2": IN_FLIGHT_PER_WORKER, "w3": IN_FLIGHT_PER_WORKER}
    assert [name for name, _ in send.log[:3]] == ["w1", "w2", "w3"]  # spread before any worker gets a second
    # one batch back from w2: the next batch goes to w2, the only one with room
    ref = next(ref for ref, task in scheduler.in_flight.items() if task.worker.name == "w2")
    scheduler.finished(scheduler.returned(ref))
    batches = batches_of(20)
    scheduler.dispatch(batches, True, send)
    assert send.log[-1][0] == "w2" and len(send.log) == 3 * IN_FLIGHT_PER_WORKER + 1


def test_dispatch_says_when_the_batches_ran_out_and_the_run_is_done() -> None:
    scheduler, send = scheduler_with(2), Sent()
    more = scheduler.dispatch(batches_of(2), True, send)  # room for more: it asked, and there were none
    assert not more and not scheduler.done(more)  # two batches still out
    full = scheduler_with(1)
    assert full.dispatch(batches_of(IN_FLIGHT_PER_WORKER), True, Sent())  # no room left: it cannot know yet
    for ref in list(scheduler.in_flight):
        scheduler.finished(scheduler.returned(ref))
    assert scheduler.done(more) and scheduler.counts.images == 8


def test_a_lost_workers_items_run_again_alone_and_one_that_kills_twice_fails() -> None:
    scheduler, send = scheduler_with(2), Sent()
    scheduler.dispatch(batches_of(1), True, send)
    ((ref, task),) = scheduler.in_flight.items()
    assert scheduler.lose(task.worker, "node lost") is True
    assert scheduler.lose(task.worker, "node lost") is False  # known already: replaced once
    assert scheduler.suspect(scheduler.returned(ref)) == []  # first death: suspects, no failure yet
    assert len(scheduler.suspects) == 4
    replacement = Worker(scheduler.next_name(), None, object())
    scheduler.add(replacement)
    scheduler.ready(replacement, "10.0.0.2 def")
    more = scheduler.dispatch(batches_of(5, size=4), True, send)
    # suspects first, each alone on an idle worker; no new batch while suspects wait
    assert more and [uris for _, uris in send.log[1:]] == [["/photos/0.jpg"], ["/photos/1.jpg"]]
    assert all(t.alone and len(t.items) == 1 for t in scheduler.in_flight.values())
    # the worker with /photos/0.jpg dies: that image has now killed two workers, alone the second time
    ref = next(r for r, t in scheduler.in_flight.items() if t.items[0].uri == "/photos/0.jpg")
    task = scheduler.returned(ref)
    scheduler.lose(task.worker, "segfault")
    failures = scheduler.suspect(task)
    assert [(f.file_path, f.stage, f.reason) for f in failures] == [("/photos/0.jpg", "worker", WORKER_DIED)]


def test_workers_that_keep_dying_without_finishing_stop_the_run() -> None:
    scheduler = scheduler_with(2)
    for _ in range(FRUITLESS_DEATHS + 2):
        worker = Worker(scheduler.next_name(), None, object())
        scheduler.add(worker)
        scheduler.lose(worker, "OOM")
    worker = Worker(scheduler.next_name(), None, object())
    scheduler.add(worker)
    with pytest.raises(RayWorkersError, match=r"died 6 times in a row without finishing a batch \(last: OOM\)"):
        scheduler.lose(worker, "OOM")


def test_a_finished_batch_resets_the_deaths_in_a_row() -> None:
    scheduler, send = scheduler_with(1), Sent()
    for _ in range(FRUITLESS_DEATHS + 1):
        worker = Worker(scheduler.next_name(), None, object())
        scheduler.add(worker)
        scheduler.lose(worker, "OOM")
    scheduler.dispatch(batches_of(1), True, send)
    (ref,) = scheduler.in_flight
    scheduler.finished(scheduler.returned(ref))
    assert scheduler.counts.deaths_in_a_row == 0


def test_a_stuck_batch_is_reported_once_per_timeout() -> None:
    clock = Clock()
    scheduler, send = scheduler_with(1, clock), Sent()
    scheduler.dispatch(batches_of(1), True, send)
    clock.now += 10
    assert scheduler.stuck(timeout=30) == []
    clock.now += 25
    assert len(scheduler.stuck(timeout=30)) == 1
    clock.now += 5
    assert scheduler.stuck(timeout=30) == []  # its worker is being killed: not twice


def test_no_worker_able_to_work_for_too_long_stops_the_run() -> None:
    clock = Clock()
    scheduler = Scheduler(WorkerPlan(1, 2.0, 0.0), clock=clock)
    scheduler.add(Worker(scheduler.next_name(), None, object()))  # starting, never ready
    scheduler.check_idle()
    clock.now += START_SECONDS + 1
    with pytest.raises(RayWorkersError, match=r"no Ray worker has been running for 300s: .*\(2 CPUs each\)"):
        scheduler.check_idle()


def test_progress_rows_rate_over_working_time_and_hide_lost_idle_workers() -> None:
    clock = Clock()
    scheduler, send = scheduler_with(2, clock), Sent()
    scheduler.dispatch(batches_of(1), True, send)
    clock.now += 2
    (ref,) = scheduler.in_flight
    scheduler.finished(scheduler.returned(ref))
    scheduler.lose(scheduler.workers[1], "gone")  # never did anything: not shown
    assert scheduler.rows() == [{"worker": "w1", "node": "10.0.0.1 abc", "alive": True, "images": 4, "rate": 2.0}]
    assert scheduler.alive() == 1

"""Run metrics: timings kept here, counts read from the report; one snapshot feeds progress, the run journal and
the Prometheus text."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from imgvec.pipeline.report import Progress, RunReport

STAGES = ("list", "read", "decode", "embed", "write")


@dataclass(slots=True)
class Metrics:
    """Where the time went: seconds per stage, and model time per image (a bounded window, for percentiles)."""

    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    _embed_per_image: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def record_embed(self, seconds: float, images: int) -> None:
        self.stage_seconds["embed"] += seconds
        if images:
            self._embed_per_image.append(seconds / images)

    def embed_percentiles(self) -> tuple[float | None, float | None]:
        """(mean, p95) of model seconds per image, or Nones before the first batch."""
        if not self._embed_per_image:
            return None, None
        samples = np.asarray(self._embed_per_image)
        return float(samples.mean()), float(np.percentile(samples, 95))


def snapshot(
    report: RunReport, metrics: Metrics, progress: Progress, *, elapsed: float, total: int | None
) -> dict[str, Any]:
    """Bring ``progress`` up to date and return the metrics snapshot, both from the report's counts and the timings.

    ``total``: the background count of the source once it has finished, else None.
    """
    progress.succeeded, progress.failed, progress.skipped = report.succeeded, report.failed, report.skipped
    progress.listing_failures = report.listing_failures
    progress.processed = report.processed
    progress.cache_hits, progress.deleted, progress.moved = report.cache_hits, report.deleted, report.moved
    progress.rate = (report.succeeded + report.failed) / max(elapsed, 1e-9)
    progress.total = total
    if progress.state == "finished" and total is None:
        progress.total = progress.processed  # the run outpaced the background count: it saw everything
    if total is not None:
        progress.remaining = max(0, total - progress.processed)
        progress.eta_seconds = progress.remaining / progress.rate if progress.rate > 0 else None
    if progress.state != "running":
        progress.remaining = 0 if progress.state == "finished" else progress.remaining
        progress.eta_seconds = 0.0 if progress.state == "finished" else None

    attempted = report.succeeded + report.failed
    mean, p95 = metrics.embed_percentiles()
    return {
        "images_processed": report.processed,
        "images_embedded": report.embedded,
        "images_failed": report.failed,
        "images_skipped": report.skipped,
        "cache_hits": report.cache_hits,
        "batches": report.batches,
        "embedding_seconds_per_image_mean": mean,
        "embedding_seconds_per_image_p95": p95,
        "success_rate": report.succeeded / attempted if attempted else None,
        "error_rate": report.failed / attempted if attempted else None,
        "cache_hit_rate": report.cache_hits / report.succeeded if report.succeeded else None,
        "stage_seconds": dict(metrics.stage_seconds),
        "runtime": {
            "runtime": progress.runtime,
            "reason": progress.runtime_reason,
            "workers": progress.decode_workers,
            "executor": progress.executor,
        },
        "decode_lanes": progress.decode_lanes,
        "gpu_decode_share": (progress.decode_lanes or {}).get("gpu_share"),
        "workers_alive": progress.workers_alive,
        "last_document_id": report.last_id,
        "lambda_invocations": progress.invocations,
        "lambda_throttles": progress.throttles,
        "lambda_concurrency": progress.concurrency,
    }


_COUNTERS = {
    "images_processed": "Files handled by the run (embedded, reused, failed or skipped).",
    "images_embedded": "Images embedded by the model.",
    "images_failed": "Files that failed (see `imgvec failures`).",
    "images_skipped": "Files skipped as unchanged or as known failures.",
    "cache_hits": "Images whose vector was reused from identical bytes.",
    "batches": "Model batches written.",
    "lambda_invocations": "Invocations of the Lambda function (--executor lambda), throttled and failed included.",
    "lambda_throttles": "Lambda invocations refused with 429: the function's concurrency was used up.",
}
_GAUGES = {
    "embedding_seconds_per_image_mean": "Mean model time per image.",
    "embedding_seconds_per_image_p95": "95th percentile of model time per image (per batch).",
    "success_rate": "Share of attempted images that got a vector.",
    "error_rate": "Share of attempted images that failed.",
    "cache_hit_rate": "Share of vectors reused from the content cache.",
    "workers_alive": "Workers running: decode workers, Ray actors with the model loaded, or Lambda calls in flight.",
    "lambda_concurrency": "Lambda invocations allowed at once now (halved on a throttle, grown back per success).",
    "gpu_decode_share": "With the model on a GPU: the share of files its JPEG decoder takes (0 when it is off).",
}


class RunMetricsCollector(Collector):
    """The latest run's metrics, read when scraped: ``imgvec metrics`` prints them once, ``imgvec serve`` exposes
    them at /metrics beside its own request metrics. ``read``: the snapshot now, or None before any run."""

    def __init__(self, read: Callable[[], dict[str, Any] | None], labels: dict[str, str]) -> None:
        self._read = read
        self._labels = dict(sorted(labels.items()))

    def collect(self) -> Iterator[Metric]:
        snapshot = self._read()
        if snapshot is None:
            return
        names, values = list(self._labels), list(self._labels.values())
        for name, help_text in _COUNTERS.items():
            if name.startswith("lambda_") and snapshot.get(name) is None:
                continue  # a run on another executor has no invocations, not zero of them
            counter = CounterMetricFamily(f"imgvec_{name}", help_text, labels=names)
            counter.add_metric(values, snapshot.get(name) or 0)
            yield counter
        for name, help_text in _GAUGES.items():
            value = snapshot.get(name)
            if value is not None:
                yield _gauge(name, help_text, names, values, value)
        stages = CounterMetricFamily("imgvec_stage_seconds", "Time spent per stage.", labels=[*names, "stage"])
        for stage, seconds in sorted(snapshot.get("stage_seconds", {}).items()):
            stages.add_metric([*values, stage], seconds)
        yield stages
        runtime = snapshot.get("runtime")
        if runtime:
            info = InfoMetricFamily("imgvec_runtime", "What embeds images in this run, and why.", labels=names)
            info.add_metric(values, {k: "" if v is None else str(v) for k, v in runtime.items()})
            yield info


def _gauge(name: str, help_text: str, names: list[str], values: list[str], value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(f"imgvec_{name}", help_text, labels=names)
    gauge.add_metric(values, value)
    return gauge


def prometheus_text(snapshot: dict[str, Any], labels: dict[str, str]) -> str:
    """The Prometheus text exposition format, for a node_exporter textfile or a scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunMetricsCollector(lambda: snapshot, labels))
    return generate_latest(registry).decode()

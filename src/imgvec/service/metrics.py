"""The service's own Prometheus metrics (requests, latency, model batches) beside the latest run's, in one
registry per app: two apps in one process (tests) never share counters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from imgvec.pipeline.metrics import RunMetricsCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "imgvec_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self._latency = Histogram(
            "imgvec_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._batch_sizes = Histogram(
            "imgvec_model_batch_size",
            "Requests served by one model call (dynamic batching).",
            ["kind"],
            registry=self.registry,
            buckets=BATCH_BUCKETS,
        )
        self._model_seconds = Histogram(
            "imgvec_model_batch_seconds", "Time of one model call.", ["kind"], registry=self.registry
        )

    def add_run(self, run_metrics: Callable[[], dict[str, Any]], labels: dict[str, str]) -> None:
        """The latest ingest run's metrics (what ``imgvec metrics`` prints), read at each scrape."""
        self.registry.register(RunMetricsCollector(run_metrics, labels))

    def on_batch(self, kind: str, size: int, seconds: float) -> None:
        """One model call of the dynamic batcher: ``kind`` text or image, ``size`` requests served."""
        self._batch_sizes.labels(kind).observe(size)
        self._model_seconds.labels(kind).observe(seconds)

    async def count(self, request: Request, call_next: Callable[[Request], Any]) -> Response:
        """Middleware: every request by its route's template (``/api/documents/{doc_id}``), never its raw path, so
        ids do not become labels."""
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        self._requests.labels(request.method, name, str(response.status_code)).inc()
        self._latency.labels(request.method, name).observe(time.perf_counter() - started)
        return response

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

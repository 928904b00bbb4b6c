"""Run metrics: counts, per-stage time, embedding latency percentiles, rates; and their Prometheus text form."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Metrics:
    images_processed: int = 0
    images_embedded: int = 0
    images_failed: int = 0
    images_skipped: int = 0
    cache_hits: int = 0
    batches: int = 0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"list": 0.0, "read": 0.0, "decode": 0.0, "embed": 0.0, "write": 0.0}
    )
    _embed_per_image: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def record_embed(self, seconds: float, images: int) -> None:
        self.stage_seconds["embed"] += seconds
        if images:
            self._embed_per_image.append(seconds / images)

    def snapshot(self) -> dict[str, Any]:
        attempted = self.images_embedded + self.cache_hits + self.images_failed
        samples = np.asarray(self._embed_per_image) if self._embed_per_image else None
        return {
            "images_processed": self.images_processed,
            "images_embedded": self.images_embedded,
            "images_failed": self.images_failed,
            "images_skipped": self.images_skipped,
            "cache_hits": self.cache_hits,
            "batches": self.batches,
            "embedding_seconds_per_image_mean": float(samples.mean()) if samples is not None else None,
            "embedding_seconds_per_image_p95": float(np.percentile(samples, 95)) if samples is not None else None,
            "success_rate": (self.images_embedded + self.cache_hits) / attempted if attempted else None,
            "error_rate": self.images_failed / attempted if attempted else None,
            "cache_hit_rate": self.cache_hits / (self.images_embedded + self.cache_hits)
            if self.images_embedded + self.cache_hits
            else None,
            "stage_seconds": dict(self.stage_seconds),
        }


_COUNTERS = {
    "images_processed": "Files handled by the run (embedded, reused, failed or skipped).",
    "images_embedded": "Images embedded by the model.",
    "images_failed": "Files that failed (see `imgvec failures`).",
    "images_skipped": "Files skipped as unchanged or as known failures.",
    "cache_hits": "Images whose vector was reused from identical bytes.",
    "batches": "Model batches written.",
}
_GAUGES = {
    "embedding_seconds_per_image_mean": "Mean model time per image.",
    "embedding_seconds_per_image_p95": "95th percentile of model time per image (per batch).",
    "success_rate": "Share of attempted images that got a vector.",
    "error_rate": "Share of attempted images that failed.",
    "cache_hit_rate": "Share of vectors reused from the content cache.",
}


def prometheus_text(snapshot: dict[str, Any], labels: dict[str, str]) -> str:
    """The Prometheus text exposition format (version 0.0.4), for a node_exporter textfile or a scrape."""
    label = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    lines: list[str] = []
    for name, help_text in _COUNTERS.items():
        lines += [f"# HELP imgvec_{name}_total {help_text}", f"# TYPE imgvec_{name}_total counter"]
        lines.append(f"imgvec_{name}_total{{{label}}} {snapshot.get(name, 0)}")
    for name, help_text in _GAUGES.items():
        value = snapshot.get(name)
        if value is None:
            continue
        lines += [
            f"# HELP imgvec_{name} {help_text}",
            f"# TYPE imgvec_{name} gauge",
            f"imgvec_{name}{{{label}}} {value}",
        ]
    lines += ["# HELP imgvec_stage_seconds_total Time spent per stage.", "# TYPE imgvec_stage_seconds_total counter"]
    for stage, seconds in sorted(snapshot.get("stage_seconds", {}).items()):
        stage_label = f'{label},stage="{stage}"' if label else f'stage="{stage}"'
        lines.append(f"imgvec_stage_seconds_total{{{stage_label}}} {seconds}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

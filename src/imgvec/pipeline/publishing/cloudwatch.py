"""``--cloudwatch NAMESPACE``: the run's metrics in CloudWatch, under the names the seed's dashboards use.

TotalImagesProcessed, EmbeddingGenerationTime, IndexingSuccessRate, ErrorRate, LambdaInvocations and CacheHitRate
(the seed's phase 5), plus ImagesPerSecond and RemainingImages, each with the index and the executor as
dimensions, all in one PutMetricData call per minute and at the end. Counts are the run's totals so far (read
them with Maximum); rates are percentages of the images attempted. boto3's ``AWS_ENDPOINT_URL_CLOUDWATCH``
points it elsewhere (moto's server in the tests).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from imgvec.pipeline.report import Progress

EVERY_SECONDS = 60.0


class CloudWatchPublisher:
    every = EVERY_SECONDS

    def __init__(self, namespace: str, index: str, *, every: float = EVERY_SECONDS) -> None:
        from botocore.config import Config

        from imgvec.aws_client import aws_client

        self.namespace = namespace
        self.index = index
        self.every = every
        self.name = f"CloudWatch namespace {namespace}"
        config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=15)
        self._client = aws_client("cloudwatch", config=config, flag="--cloudwatch")

    def publish(self, progress: Progress, metrics: dict[str, Any]) -> None:
        self._client.put_metric_data(Namespace=self.namespace, MetricData=metric_data(progress, metrics, self.index))


def metric_data(progress: Progress, metrics: dict[str, Any], index: str) -> list[dict[str, Any]]:
    """The data points of one publish (those the run can say something about: no rate before an attempt)."""
    dimensions = [{"Name": "Index", "Value": index}, {"Name": "Executor", "Value": progress.executor}]
    now = datetime.now(UTC)
    mean = metrics.get("embedding_seconds_per_image_mean")
    values: list[tuple[str, float | None, str]] = [
        ("TotalImagesProcessed", metrics.get("images_processed"), "Count"),
        ("EmbeddingGenerationTime", mean * 1000 if mean is not None else None, "Milliseconds"),
        ("IndexingSuccessRate", _percent(metrics.get("success_rate")), "Percent"),
        ("ErrorRate", _percent(metrics.get("error_rate")), "Percent"),
        ("LambdaInvocations", metrics.get("lambda_invocations"), "Count"),
        ("CacheHitRate", _percent(metrics.get("cache_hit_rate")), "Percent"),
        ("ImagesPerSecond", progress.rate, "Count/Second"),
        ("RemainingImages", progress.remaining, "Count"),
    ]
    return [
        {"MetricName": name, "Dimensions": dimensions, "Timestamp": now, "Value": float(value), "Unit": unit}
        for name, value, unit in values
        if value is not None
    ]


def _percent(share: float | None) -> float | None:
    return share * 100 if share is not None else None

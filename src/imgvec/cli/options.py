"""Options that several commands share, each declared once.

Flag groups: pipeline flags are named after ``PipelineOptions`` fields, k-NN flags after ``KnnIndexSettings``
fields. ``command(pipeline=..., knn=True)`` adds the ones a command takes and hands each group over as one mapping,
so a new pipeline flag is written here and in ``PipelineOptions``, nowhere else.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from imgvec.embed.decode import DEFAULT_MAX_PIXELS

PIPELINE_FLAGS: dict[str, tuple[Any, Any]] = {
    "batch_size": (
        Annotated[
            int | None,
            typer.Option(min=1, max=4096, help="Images per model batch (default: 32 on a CPU, 256 on a GPU)."),
        ],
        None,
    ),
    "workers": (
        Annotated[
            int | None,
            typer.Option(
                min=0, help="Decode worker processes (default: cores - 1, fewer if memory is short; 0 = in-process)."
            ),
        ],
        None,
    ),
    "max_files": (Annotated[int | None, typer.Option(min=1, help="Stop after this many files.")], None),
    "rate_limit": (Annotated[float | None, typer.Option(min=0.001, help="At most this many files per second.")], None),
    "retry_failed": (Annotated[bool, typer.Option(help="Retry files that failed in an earlier run.")], False),
    "io_concurrency": (
        Annotated[
            int | None,
            typer.Option(
                min=0, max=512, help="Reads in flight (default: 8 for folders, 32 for S3; 0 = decode workers read)."
            ),
        ],
        None,
    ),
    "max_pixels": (
        Annotated[int, typer.Option(min=1, help="Refuse larger images (decompression-bomb guard).")],
        DEFAULT_MAX_PIXELS,
    ),
    "file_timeout": (
        Annotated[
            float,
            typer.Option(
                min=1,
                metavar="SECONDS",
                help="A file still reading or decoding after this long fails and its worker is replaced.",
            ),
        ],
        300.0,
    ),
    "follow_external": (
        Annotated[
            bool,
            typer.Option(help="Follow symlinks that lead out of the folder (off: each is listed as a failure)."),
        ],
        False,
    ),
    "full_decode": (
        Annotated[
            bool,
            typer.Option(
                help="Decode every image at full size (the reference preprocessing; slower for large photos)."
            ),
        ],
        False,
    ),
    "gpu_decode": (
        Annotated[
            bool,
            typer.Option(
                help="With the model on a CUDA GPU, also decode JPEGs there (nvJPEG), beside the CPU decode workers."
            ),
        ],
        True,
    ),
    "executor": (
        Annotated[
            str,
            typer.Option(
                metavar="local|ray|lambda",
                help="Where images are decoded and embedded: this machine, actors on a Ray cluster "
                "(pip install 'imgvec[ray]'; docs/scaling.md), or an AWS Lambda function (docs/aws.md).",
            ),
        ],
        "local",
    ),
    "ray_address": (
        Annotated[
            str | None,
            typer.Option(
                metavar="ADDRESS",
                help="With --executor ray: auto, ray://host:10001 or host:port (default: start Ray on this machine).",
            ),
        ],
        None,
    ),
    "ray_workers": (
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="With --executor ray: actors, each loading the model once (default: fill the "
                "cluster's CPUs, or GPUs with --ray-gpus-per-worker).",
            ),
        ],
        None,
    ),
    "ray_gpus_per_worker": (
        Annotated[
            float,
            typer.Option(min=0, help="With --executor ray: GPUs per actor (0.5: two actors share one GPU)."),
        ],
        0.0,
    ),
    "lambda_function": (
        Annotated[
            str | None,
            typer.Option(metavar="NAME", help="With --executor lambda: the function running imgvec's handler."),
        ],
        None,
    ),
    "lambda_concurrency": (
        Annotated[int, typer.Option(min=1, max=10000, help="With --executor lambda: invocations at once, at most.")],
        10,
    ),
    "lambda_batch_size": (
        Annotated[int, typer.Option(min=1, max=1000, help="With --executor lambda: images per invocation.")],
        100,
    ),
    "lambda_rate": (
        Annotated[
            float | None,
            typer.Option(min=0.001, help="With --executor lambda: at most this many invocations per second."),
        ],
        None,
    ),
    "lambda_endpoint": (
        Annotated[
            str | None,
            typer.Option(
                "--lambda-endpoint-url",
                metavar="URL",
                help="With --executor lambda: another Lambda endpoint (default: AWS_ENDPOINT_URL_LAMBDA, else AWS).",
            ),
        ],
        None,
    ),
    "lambda_timeout": (
        Annotated[
            float,
            typer.Option(min=1, max=900, help="With --executor lambda: the function's time-out in seconds."),
        ],
        300.0,
    ),
    "cloudwatch": (
        Annotated[
            str | None,
            typer.Option(
                metavar="NAMESPACE",
                help="Publish the run's metrics to CloudWatch under NAMESPACE each minute (docs/aws.md).",
            ),
        ],
        None,
    ),
    "state_file": (
        Annotated[
            str | None,
            typer.Option(
                metavar="URL",
                help="Keep the run's progress in s3://bucket/key.json (or a path) every 30 s, for "
                "`imgvec progress --state-file` on another machine.",
            ),
        ],
        None,
    ),
}
"""Each pipeline flag: (annotation, default), keyed by its ``PipelineOptions`` field."""
TUNING = ("batch_size", "workers", "io_concurrency", "max_pixels", "file_timeout", "full_decode", "gpu_decode")
"""How the pipeline runs on this machine: every command that runs the pipeline takes these."""
PUBLISHING = ("cloudwatch", "state_file")
"""Where else a run's progress goes: ``ingest`` (also ``--follow``), ``sync`` and ``watch``."""
RUNNING = (*TUNING, "follow_external", "rate_limit", "retry_failed", *PUBLISHING)
"""A run over a source: ``sync`` and ``watch`` (``ingest`` adds ``max_files``)."""

LAMBDA = (
    "lambda_function",
    "lambda_concurrency",
    "lambda_batch_size",
    "lambda_rate",
    "lambda_endpoint",
    "lambda_timeout",
)
EXECUTING = ("executor", "ray_address", "ray_workers", "ray_gpus_per_worker", *LAMBDA)
"""Where a batch run's images are embedded: ``ingest`` (with ``--missing``), ``sync`` and ``migrate``'s fill."""

AsJson = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
MaxDelete = Annotated[
    float,
    typer.Option(
        min=0,
        max=100,
        metavar="PERCENT",
        help="Refuse to delete more than this share of the source's documents in one pass (an unmounted share "
        "looks like every file deleted); 100 turns the guard off.",
    ),
]
KNN_FLAGS: dict[str, tuple[Any, Any]] = {
    "shards": (Annotated[int, typer.Option(min=1, help="Primary shards (ignored by Serverless).")], 2),
    "replicas": (Annotated[int, typer.Option(min=0, help="Replicas (ignored by Serverless).")], 1),
    "engine": (
        Annotated[str, typer.Option(help="k-NN engine: faiss (default), lucene, or nmslib (clusters < 2.19).")],
        "faiss",
    ),
    "m": (Annotated[int, typer.Option("--m", min=2, max=100, help="HNSW links per node.")], 16),
    "ef_construction": (Annotated[int, typer.Option(min=2, help="HNSW candidate list while building.")], 128),
    "ef_search": (
        Annotated[int, typer.Option(min=2, help="HNSW candidate list while searching (faiss, nmslib; lucene: the k).")],
        100,
    ),
}
"""A new OpenSearch index's settings (``index create``, ``migrate``), keyed by ``KnnIndexSettings`` field."""


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``1h30m``, ``1d`` → seconds."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd]?)+", text.strip())
    if parts is None:
        raise ValueError(f"{text!r} is not a duration (like 30s, 15m, 1h, 1h30m)")
    seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip()))
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be more than zero")
    return seconds

"""The pipeline's settings, one typed object: the CLI's pipeline flags are its fields, by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from imgvec.embed.decode import DEFAULT_MAX_PIXELS
from imgvec.pipeline.retry import RetryPolicy
from imgvec.pipeline.tuning import default_workers


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    """Decode worker processes; 0 decodes in threads of this process (tests, tiny runs)."""
    workers_tuned: bool = False
    """``workers`` was left to the machine: once the model is loaded, its measured cost may change it
    (``wiring.fit_to_model``)."""
    batch_size_tuned: bool = False
    """``batch_size`` was left to the machine: on a GPU, the batch its measurement found fastest replaces it."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int | None = None
    io_concurrency: int = 8
    """Threads reading bytes ahead of the decoders: S3 and network shares are latency-bound, so many reads in
    flight keep the decoders fed. 0: each decode worker reads its own files (fast local disks, no copy)."""
    rate_limit: float | None = None
    """At most this many files per second enter the pipeline."""
    retry_failed: bool = False
    """Retry files that failed in an earlier run (otherwise they are skipped until they change)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    follow_external: bool = False
    """Follow symlinks that lead out of a source folder (off: each is one listing failure saying so)."""
    file_timeout: float = 300.0
    """Seconds one file may take to read and decode before it is recorded as failed and its worker replaced."""
    full_decode: bool = False
    """Decode every image at full size, as the reference preprocessing does. Off: large images are decoded
    reduced (docs/performance.md states the tolerance), several times faster for camera JPEGs."""
    gpu_decode: bool = True
    """With the model on a CUDA GPU, JPEGs are also decoded there (nvJPEG), beside the CPU decode workers, in the
    shares their measured rates set (``executors/gpu_lane.py``). No effect on a CPU."""
    executor: str = "local"
    """local: this machine decodes and embeds; ray: actors on a Ray cluster do (``executors/ray/``); lambda: an AWS
    Lambda function does (``executors/aws_lambda/``)."""
    ray_address: str | None = None
    """With ``executor`` ray: ``auto`` (the cluster this machine belongs to), ``ray://host:10001``, or host:port;
    None starts a Ray instance on this machine for the run."""
    ray_workers: int | None = None
    """Ray actors (each loads the model once); None: as many as the cluster's CPUs (or GPUs) hold."""
    ray_gpus_per_worker: float = 0.0
    """GPUs each actor asks Ray for (fractions share a GPU); 0: actors embed on CPUs."""
    lambda_function: str | None = None
    """With ``executor`` lambda: the function's name or ARN (imgvec's handler, docs/aws.md)."""
    lambda_concurrency: int = 10
    """Invocations at once, at most (the function's reserved concurrency is the real bound; throttles adapt)."""
    lambda_batch_size: int = 100
    """Images per invocation."""
    lambda_rate: float | None = None
    """At most this many invocations per second."""
    lambda_endpoint: str | None = None
    """Another Lambda endpoint (an emulator); None: boto3's own (``AWS_ENDPOINT_URL_LAMBDA``, else AWS)."""
    lambda_timeout: float = 300.0
    """The function's time-out in seconds: the driver waits a little longer than this for an answer."""
    cloudwatch: str | None = None
    """Publish the run's metrics to CloudWatch under this namespace (``publishing/cloudwatch.py``)."""
    state_file: str | None = None
    """Keep the run's progress in this file, ``s3://bucket/key.json`` or a path (``publishing/state_file.py``)."""

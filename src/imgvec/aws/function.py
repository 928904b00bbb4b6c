"""The embedding function behind the Lambda handler: the worker's one-image call and the executor's batches.

It holds what a warm Lambda keeps between invocations (the model, the S3 client, the store for ``useCache``) and
never imports torch: the model is a bundle (``embed/bundle.py``) run by ONNX Runtime or OpenVINO, the decoding and
preprocessing are the pipeline's own. Everything is configured by the function's environment (``FunctionConfig``).
Whatever goes wrong with one image is an answer saying so, never a crashed runtime: the worker gets an error
payload with a type and one line, the executor a failure per item with its stage and reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgvec.embed.bundle import BundleEmbedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS
from imgvec.errors import ImageDecodeError, ImgvecError, SourceError, UsageError, reason
from imgvec.pipeline.executors.aws_lambda import wire
from imgvec.pipeline.executors.decode_worker import model_input
from imgvec.search import embedding_json, image_pixels, stored_vector
from imgvec.sources.locations import ObjectLocation, parse_s3_url
from imgvec.sources.reader import LocationReader
from imgvec.sources.s3 import S3Connection
from imgvec.stores.base import Store

log = logging.getLogger(__name__)

MAX_OBJECT_BYTES = 64 << 20
"""The largest image the function reads, as ``POST /api/embed`` (larger than any camera JPEG or phone HEIC)."""
MAX_BATCH_ITEMS = 1000
METRICS_NAMESPACE = "imgvec"


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    bundle: Path
    """The model bundle; default ``$LAMBDA_TASK_ROOT/model`` (baked into the image by ``scripts/lambda-package.sh``)."""
    store: str | None = None
    """``useCache`` looks here (an OpenSearch URL, as ``--store``); None: no cache, every image is embedded."""
    index: str = "images"
    runtime: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    s3_endpoint: str | None = None
    """An S3-compatible endpoint (``AWS_ENDPOINT_URL_S3``): its https URLs are read path-style."""
    readers: int = 8
    """S3 reads in flight in a batch: a read waits on the network, not the CPU."""
    metrics_namespace: str = METRICS_NAMESPACE
    cache_dir: Path = Path("/tmp/imgvec")
    """Where OpenVINO keeps its compiled graph: /tmp is a Lambda's only writable folder, and lives as long as the
    instance, so each cold start compiles once."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> FunctionConfig:
        """``IMGVEC_MODEL_BUNDLE``, ``IMGVEC_STORE``, ``IMGVEC_INDEX``, ``IMGVEC_RUNTIME``, ``IMGVEC_PRECISION``,
        ``IMGVEC_THREADS``, ``IMGVEC_MAX_PIXELS``, ``IMGVEC_READERS``, ``IMGVEC_METRICS_NAMESPACE``,
        ``IMGVEC_CACHE_DIR``."""
        root = env.get("LAMBDA_TASK_ROOT") or os.getcwd()
        try:
            threads = int(env["IMGVEC_THREADS"]) if env.get("IMGVEC_THREADS") else None
            max_pixels = int(env.get("IMGVEC_MAX_PIXELS") or DEFAULT_MAX_PIXELS)
            readers = int(env.get("IMGVEC_READERS") or 8)
        except ValueError as exc:
            raise UsageError(f"the function's environment: {exc}") from None
        return cls(
            bundle=Path(env.get("IMGVEC_MODEL_BUNDLE") or Path(root) / "model"),
            store=env.get("IMGVEC_STORE") or None,
            index=env.get("IMGVEC_INDEX") or "images",
            runtime=env.get("IMGVEC_RUNTIME") or "auto",
            precision=env.get("IMGVEC_PRECISION") or "auto",
            threads=threads,
            max_pixels=max_pixels,
            s3_endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            readers=max(1, readers),
            metrics_namespace=env.get("IMGVEC_METRICS_NAMESPACE") or METRICS_NAMESPACE,
            cache_dir=Path(env.get("IMGVEC_CACHE_DIR") or "/tmp/imgvec"),
        )


class EmbeddingFunction:
    def __init__(self, config: FunctionConfig) -> None:
        self.config = config
        began = time.perf_counter()
        self.embedder = BundleEmbedder(
            config.bundle,
            runtime=config.runtime,
            precision=config.precision,
            threads=config.threads,
            cache_dir=config.cache_dir,
        )
        self.load_seconds = time.perf_counter() - began
        self.reader = LocationReader(S3Connection(endpoint_url=config.s3_endpoint, max_connections=config.readers + 2))
        self._readers = ThreadPoolExecutor(config.readers, thread_name_prefix="imgvec-read")
        self._store: Store | None = None
        log.info(
            "model %s on %s (%s)",
            self.embedder.identity.describe(),
            self.embedder.runtime.describe(),
            self.embedder.runtime.reason,
        )

    # -- the worker's call ------------------------------------------------------------------------------

    def embed_one(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """``{"imageUrl", "useCache"}`` → ``{"data": {"embedding", "dimension", "model", "cached"}}``."""
        url = event.get("imageUrl")
        use_cache = event.get("useCache", True)
        if not isinstance(url, str) or not url:
            raise UsageError("expected {'imageUrl': 's3://bucket/key', 'useCache': true}: imageUrl is missing")
        if not isinstance(use_cache, bool):
            raise UsageError(f"useCache must be true or false, not {use_cache!r}")
        data = self.reader.read(self._s3_url(url).s3_url, max_bytes=MAX_OBJECT_BYTES)
        began = time.perf_counter()
        vector = self._cached(hashlib.sha256(data).hexdigest()) if use_cache else None
        cached = vector is not None
        if vector is None:
            pixels = image_pixels(self.embedder, data, self.config.max_pixels)
            vector = self.embedder.embed_images(pixels[None])[0]
        self._metrics(images=1, cached=int(cached), failures=0, seconds=time.perf_counter() - began)
        return {"data": embedding_json(vector, self.embedder.identity, cached=cached)}

    def _s3_url(self, url: str) -> ObjectLocation:
        """Only S3 objects: a path or any other URL is refused (the function must not read its own files, or call
        hosts a caller names)."""
        location = parse_s3_url(url, self.config.s3_endpoint)
        if location is None or not location.key:
            raise UsageError(f"imageUrl must be an s3://bucket/key or S3 https URL, not {url[:200]!r}")
        return location

    def _cached(self, content_hash: str) -> np.ndarray | None:
        """The stored vector of identical bytes, if the function has a store; a store that cannot answer costs a
        model call and a log line, not the answer."""
        if self.config.store is None:
            return None
        try:
            return stored_vector(self.store, self.embedder.identity, content_hash)
        except Exception as exc:  # noqa: BLE001 - the cache is an optimisation: embed instead
            log.warning("useCache: the store %s did not answer (%s); embedding instead", self.config.store, reason(exc))
            self._store = None
            return None

    @property
    def store(self) -> Store:
        if self._store is None:
            from imgvec import wiring
            from imgvec.settings import Settings

            assert self.config.store is not None
            settings = Settings(
                store=self.config.store,
                index=self.config.index,
                aws_service=os.environ.get("IMGVEC_AWS_SERVICE") or None,
                aws_region=os.environ.get("AWS_REGION") or None,
            )
            self._store = wiring.open_store(settings)
        return self._store

    # -- the executor's batches -----------------------------------------------------------------------

    def embed_batch(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """``{"items": [{"id", "bucket"+"key" | "imageUrl"}]}`` → each item's vector or failure (``wire``)."""
        items = event.get("items")
        if not isinstance(items, list) or len(items) > MAX_BATCH_ITEMS:
            raise UsageError(f"items must be a list of at most {MAX_BATCH_ITEMS} {{id, bucket, key}} objects")
        began = time.perf_counter()
        answers: list[dict[str, Any]] = []
        ready: list[tuple[str, np.ndarray, str, Any, float, float]] = []
        for item_id, data, read_seconds in self._read_ahead(items):
            if isinstance(data, str):
                answers.append(wire.failure_json(item_id, "read", data))
                continue
            decode_began = time.perf_counter()
            try:
                pixels, picture = model_input(
                    data, self.embedder.preprocessor, self.config.max_pixels, self.embedder.preprocessor.reduce_for
                )
            except ImageDecodeError as exc:
                answers.append(wire.failure_json(item_id, "decode", str(exc)))
                continue
            content_hash = hashlib.sha256(data).hexdigest()
            ready.append((item_id, pixels, content_hash, picture, read_seconds, time.perf_counter() - decode_began))
        if ready:
            model_began = time.perf_counter()
            try:
                vectors = self.embedder.embed_images(np.stack([entry[1] for entry in ready]))
            except Exception as exc:  # noqa: BLE001 - the model refused this batch: each image says why
                answers.extend(wire.failure_json(entry[0], "embed", f"model failed: {reason(exc)}") for entry in ready)
            else:
                share = (time.perf_counter() - model_began) / len(ready)
                for (item_id, _pixels, content_hash, picture, read_s, decode_s), vector in zip(
                    ready, vectors, strict=True
                ):
                    timings = (read_s, decode_s, share)
                    answers.append(wire.embedded_json(item_id, vector, content_hash, picture, timings))
        failures = sum(1 for answer in answers if "reason" in answer)
        self._metrics(images=len(answers) - failures, cached=0, failures=failures, seconds=time.perf_counter() - began)
        return {
            "items": answers,
            "identity": json.loads(self.embedder.identity.to_json()),
            "runtime": self.embedder.runtime.describe(),
            "runtime_reason": self.embedder.runtime.reason,
        }

    def _read_ahead(self, items: list[Any]) -> Iterator[tuple[str, bytes | str, float]]:
        """Each item's bytes in order, at most twice the readers' count read ahead: a batch of large files is decoded
        as it arrives and its bytes let go, instead of all of them held at once in the function's memory."""
        pending: deque[Future[tuple[str, bytes | str, float]]] = deque()
        for entry in items:
            pending.append(self._readers.submit(self._read, entry))
            if len(pending) >= 2 * self.config.readers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _read(self, entry: Any) -> tuple[str, bytes | str, float]:
        """An item's id and bytes, or the reason they could not be read."""
        began = time.perf_counter()
        item_id = str(entry.get("id", "")) if isinstance(entry, dict) else ""
        try:
            if not isinstance(entry, dict):
                raise UsageError("each item must be an object {id, bucket, key} or {id, imageUrl}")
            if entry.get("bucket") and entry.get("key"):
                location = ObjectLocation(str(entry["bucket"]), str(entry["key"]))
            else:
                location = self._s3_url(str(entry.get("imageUrl") or ""))
            data: bytes | str = self.reader.read(location.s3_url, max_bytes=MAX_OBJECT_BYTES)
        except FileNotFoundError as exc:
            data = str(exc)
        except (OSError, ImgvecError) as exc:
            data = reason(exc)
        return item_id, data, time.perf_counter() - began

    # -- metrics ------------------------------------------------------------------------------------------

    def _metrics(self, *, images: int, cached: int, failures: int, seconds: float) -> None:
        """One Embedded Metric Format line on stdout: CloudWatch Logs turns it into metrics, no API call needed."""
        function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "imgvec")
        line = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.config.metrics_namespace,
                        "Dimensions": [["FunctionName"]],
                        "Metrics": [
                            {"Name": "ImagesEmbedded", "Unit": "Count"},
                            {"Name": "CacheHits", "Unit": "Count"},
                            {"Name": "Failures", "Unit": "Count"},
                            {"Name": "EmbeddingGenerationTime", "Unit": "Milliseconds"},
                        ],
                    }
                ],
            },
            "FunctionName": function,
            "ImagesEmbedded": images,
            "CacheHits": cached,
            "Failures": failures,
            "EmbeddingGenerationTime": round(seconds * 1000, 3),
        }
        print(json.dumps(line), flush=True)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """What the caller gets instead of an embedding: the error's type and one line."""
    if isinstance(exc, FileNotFoundError):
        kind = "ObjectNotFound"
    elif isinstance(exc, ImageDecodeError):
        kind = "ImageDecodeError"
    elif isinstance(exc, UsageError):
        kind = "InvalidRequest"
    elif isinstance(exc, (SourceError, OSError)):
        kind = "ReadError"
    elif isinstance(exc, ImgvecError):
        kind = type(exc).__name__
    else:
        kind = "InternalError"
    message = reason(exc) if not isinstance(exc, FileNotFoundError) else str(exc)
    return {"error": {"type": kind, "message": message.splitlines()[0][:1000] if message else kind}}

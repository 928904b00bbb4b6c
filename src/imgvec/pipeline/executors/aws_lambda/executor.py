"""``--executor lambda``: the run's images read, decoded and embedded by an AWS Lambda function, many at once.

The driver (this process) keeps everything a run keeps (listing, skips, journal, failures, lock, the one write
path) and sends batches of S3 locations to the function (``wire.py``), at most ``--lambda-concurrency`` at once
and ``--lambda-rate`` per second. Vectors come back and go through the write path; a driver killed at any moment
resumes as any run does (an image embedded but not written is embedded again, and upserts are idempotent).

What comes back decides what happens next (``invoker.py``). A throttle pauses new invocations with an adaptive
back-off and halves the concurrency in use, which grows back by one per success (as TCP does): the function's
reserved concurrency is then shared, not hammered. A batch that fails (a function error, a time-out, a 5xx, an
answer over 6 MB) is sent again once, then split in halves, down to single images; an image whose invocation
fails twice on its own is recorded as that image's failure, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from imgvec.documents import Failure, SourceItem
from imgvec.embed.base import Embedder
from imgvec.errors import UsageError
from imgvec.identity import IndexIdentity
from imgvec.pipeline.executors.aws_lambda import wire
from imgvec.pipeline.executors.aws_lambda.invoker import Invocation, Kind, LambdaClient, LambdaError
from imgvec.pipeline.executors.base import Embedded, ExecutorStatus
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.base import Source

log = logging.getLogger(__name__)

TRIES_PER_BATCH = 2
"""A batch (or a single image) that fails this often is split (or recorded as failed)."""
FIRST_PAUSE = 0.5
MAX_PAUSE = 20.0
UNREACHABLE_LIMIT = 3
"""Consecutive connection failures before any invocation succeeded: the endpoint is wrong or down, say so."""
NOT_IN_S3 = "not in S3: --executor lambda reads images from S3 (a bucket and key, or the document's s3_url)"


@dataclass(slots=True)
class Batch:
    items: list[SourceItem]
    tries: int = 0
    not_before: float = 0.0
    """A failed batch waits a moment before it is sent again (the others go on meanwhile)."""


@dataclass(slots=True)
class Calls:
    """What progress and /metrics show of the function: invocations, throttles and the concurrency in use."""

    invocations: int = 0
    throttles: int = 0
    failed: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    images: int = 0
    seconds: float = 0.0
    """Invocation time summed (what Lambda bills, give or take its rounding)."""
    window: int = 1
    in_flight: int = 0


class LambdaExecutor:
    def __init__(self, source: Source, embedder: Embedder, options: PipelineOptions) -> None:
        if not options.lambda_function:
            raise UsageError("--executor lambda needs --lambda-function NAME (the function that runs imgvec)")
        if Path(source.location).is_dir():
            raise UsageError(
                f"--executor lambda reads images from S3, and {source.location} is a folder here: "
                "ingest its S3 mirror (s3://bucket/prefix) or an index whose documents have s3_url"
            )
        self.embedder = embedder
        self.options = options
        self.client = LambdaClient(
            options.lambda_function,
            endpoint_url=options.lambda_endpoint,
            timeout=options.lambda_timeout,
            connections=options.lambda_concurrency,
        )
        self.calls = Calls(window=options.lambda_concurrency)
        self._pool = ThreadPoolExecutor(options.lambda_concurrency, thread_name_prefix="imgvec-lambda")
        self._pause_until = 0.0
        self._pause = FIRST_PAUSE
        self._next_call = 0.0
        self._checked: set[str] = set()
        self._runtime = ("", "")
        self._unreachable = 0
        self._ever_answered = False

    # -- the run --------------------------------------------------------------------------------------

    def outcomes(self, items: Iterable[SourceItem]) -> Iterator[Embedded | Failure]:
        batches = _batched(iter(items), self.options.lambda_batch_size)
        waiting: deque[Batch] = deque()
        in_flight: dict[Future[Invocation], Batch] = {}
        more = True
        while True:
            while len(in_flight) < self.calls.window and time.monotonic() >= self._pause_until:
                if more and not any(batch.not_before <= time.monotonic() for batch in waiting):
                    items_now = next(batches, None)
                    if items_now is None:
                        more = False
                    else:
                        sendable, not_in_s3 = _split_by_location(items_now)
                        yield from (Failure.of(item, "read", NOT_IN_S3) for item in not_in_s3)
                        if sendable:
                            waiting.append(Batch(sendable))
                batch = _first_due(waiting)
                if batch is None:
                    break
                self._wait_for_rate()
                in_flight[self._pool.submit(self._invoke, batch)] = batch
            self.calls.in_flight = len(in_flight)
            if not in_flight:
                if not more and not waiting:
                    return
                time.sleep(0.05)
                continue
            done, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                batch = in_flight.pop(future)
                yield from self._finish(batch, future.result(), waiting)
            self.calls.in_flight = len(in_flight)

    def _invoke(self, batch: Batch) -> Invocation:
        return self.client.invoke(wire.request_of(batch.items))

    def _wait_for_rate(self) -> None:
        """``--lambda-rate``: invocations are spaced evenly, at most that many per second."""
        rate = self.options.lambda_rate
        if not rate:
            return
        now = time.monotonic()
        if self._next_call > now:
            time.sleep(self._next_call - now)
        self._next_call = max(now, self._next_call) + 1.0 / rate

    def _finish(self, batch: Batch, call: Invocation, waiting: deque[Batch]) -> Iterator[Embedded | Failure]:
        calls = self.calls
        calls.invocations += 1
        calls.sent_bytes += call.sent
        calls.received_bytes += call.received
        calls.seconds += call.seconds
        if call.kind is Kind.OK:
            assert call.answer is not None
            self._ever_answered = True
            self._unreachable = 0
            self._pause = FIRST_PAUSE
            calls.window = min(self.options.lambda_concurrency, calls.window + 1)
            yield from self._answered(batch, call.answer)
            return
        if call.kind is Kind.FATAL:
            raise LambdaError(call.reason)
        if call.kind is Kind.THROTTLED:
            calls.throttles += 1
            calls.window = max(1, calls.window // 2)
            self._back_off()
            waiting.appendleft(batch)  # a throttle is not the batch's fault: same batch, no try counted
            return
        if call.kind is Kind.UNREACHABLE:
            self._unreachable += 1
            if not self._ever_answered and self._unreachable >= UNREACHABLE_LIMIT:
                raise LambdaError(f"cannot reach Lambda at {self.client.endpoint}: {call.reason}")
        calls.failed += 1
        batch.tries += 1
        log.info("Lambda batch of %d failed (try %d): %s", len(batch.items), batch.tries, call.reason)
        if batch.tries < TRIES_PER_BATCH:
            batch.not_before = time.monotonic() + FIRST_PAUSE * random.uniform(0.5, 1.0)
            waiting.append(batch)
        elif len(batch.items) > 1:
            half = len(batch.items) // 2
            waiting.extend([Batch(batch.items[:half]), Batch(batch.items[half:])])
        else:
            yield Failure.of(
                batch.items[0], "embed", f"the Lambda function failed twice on this image alone: {call.reason}"
            )

    def _back_off(self) -> None:
        """After a throttle, pause new invocations; each pause in a row is longer (with jitter), up to
        ``MAX_PAUSE``, and a success ends the series."""
        self._pause_until = max(self._pause_until, time.monotonic() + self._pause * random.uniform(0.5, 1.0))
        self._pause = min(MAX_PAUSE, self._pause * 2)

    def _answered(self, batch: Batch, answer: dict) -> Iterator[Embedded | Failure]:
        self._check_identity(answer)
        self._runtime = (str(answer.get("runtime") or ""), str(answer.get("runtime_reason") or ""))
        by_id = {str(entry.get("id")): entry for entry in answer["items"] if isinstance(entry, dict)}
        for position, item in enumerate(batch.items):
            entry = by_id.get(str(position))
            if entry is None:
                yield Failure.of(item, "embed", "the Lambda function's answer left this image out")
            elif "vector" in entry:
                self.calls.images += 1
                read_s, decode_s, embed_s = (float(value) for value in entry.get("seconds", (0, 0, 0)))
                yield Embedded(
                    item,
                    wire.vector_of(entry),
                    str(entry["content_hash"]),
                    wire.picture_of(entry),
                    read_s,
                    decode_s,
                    embed_s,
                    tuple(entry.get("warnings") or ()),
                )
            else:
                yield wire.failure_of(item, entry)

    def _check_identity(self, answer: dict) -> None:
        """The function's model must be the run's: another model's vectors would be confident nonsense."""
        identity = json.dumps(answer.get("identity"), sort_keys=True)
        if identity in self._checked:
            return
        if answer.get("identity") is None:
            raise LambdaError("the Lambda function's answer names no model: is it imgvec's handler?")
        theirs, ours = IndexIdentity.from_json(identity), self.embedder.identity
        if not ours.compatible(theirs):
            raise LambdaError(
                f"the Lambda function {self.client.function} embeds with {theirs.describe()}, weights "
                f"{theirs.pretrained!r}; this run needs {ours.describe()}, weights {ours.pretrained!r}: deploy the "
                "run's model (imgvec export-model, scripts/lambda-package.sh; docs/aws.md)"
            )
        self._checked.add(identity)

    # -- progress -------------------------------------------------------------------------------------

    def status(self) -> ExecutorStatus:
        calls = self.calls
        per_image = (calls.sent_bytes + calls.received_bytes) / calls.images if calls.images else None
        return ExecutorStatus(
            "lambda",
            self._runtime[0],
            self._runtime[1],
            workers_alive=calls.in_flight,
            bytes_per_image=round(per_image, 1) if per_image is not None else None,
            invocations=calls.invocations,
            throttles=calls.throttles,
            concurrency=calls.window,
            function_seconds_per_image=calls.seconds / calls.images if calls.images else None,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)  # a stopped run does not wait on answers


def _first_due(waiting: deque[Batch]) -> Batch | None:
    """The first waiting batch whose pause is over, taken out of ``waiting``."""
    now = time.monotonic()
    for position, batch in enumerate(waiting):
        if batch.not_before <= now:
            del waiting[position]
            return batch
    return None


def _batched(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    while batch := list(islice(items, size)):
        yield batch


def _split_by_location(items: list[SourceItem]) -> tuple[list[SourceItem], list[SourceItem]]:
    inside = [item for item in items if wire.location_of(item) is not None]
    return inside, [item for item in items if wire.location_of(item) is None]

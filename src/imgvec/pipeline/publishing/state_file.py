"""``--state-file s3://bucket/key.json`` (or a path): the run's progress as the seed's ``batch-progress.json``.

The seed's fields first (last_processed_id, total_processed, total_remaining, success_count, failure_count,
start_time, estimated_completion), then imgvec's whole progress under ``progress``, which ``imgvec progress
--state-file`` prints on any machine that can read the object. Written every 30 s and at the run's end; on S3 one
PUT replaces the object whole, and a file is renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgvec.errors import ImgvecError, UsageError
from imgvec.pipeline.report import Progress
from imgvec.sources.locations import ObjectLocation, parse_s3_url

if TYPE_CHECKING:
    from imgvec.sources.s3 import S3Connection

EVERY_SECONDS = 30.0
MAX_STATE_BYTES = 1 << 20


class StateFilePublisher:
    every = EVERY_SECONDS

    def __init__(self, location: str, index: str, s3: S3Connection, *, every: float = EVERY_SECONDS) -> None:
        self.location = location
        self.index = index
        self.every = every
        self.name = f"state file {location}"
        self._remote = _s3_location(location, s3)
        self._s3 = s3
        self._client: Any = None
        if self._remote is None and not Path(location).expanduser().parent.is_dir():
            raise UsageError(f"--state-file {location}: the folder {Path(location).parent} does not exist")

    def publish(self, progress: Progress, metrics: dict[str, Any]) -> None:
        body = (json.dumps(state(progress, metrics, self.index), indent=2) + "\n").encode()
        if self._remote is None:
            path = Path(self.location).expanduser()
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(body)
            os.replace(tmp, path)
            return
        if self._client is None:
            from imgvec.sources.s3 import make_client

            self._client = make_client(self._s3)
        self._client.put_object(
            Bucket=self._remote.bucket, Key=self._remote.key, Body=body, ContentType="application/json"
        )


def state(progress: Progress, metrics: dict[str, Any], index: str) -> dict[str, Any]:
    eta = progress.eta_seconds
    finished = progress.state == "finished"
    completion = datetime.now(UTC) + timedelta(seconds=eta) if eta is not None and not finished else None
    return {
        "last_processed_id": metrics.get("last_document_id"),
        "total_processed": progress.processed,
        "total_remaining": progress.remaining,
        "success_count": progress.succeeded,
        "failure_count": progress.failed,
        "start_time": progress.started_at,
        "estimated_completion": completion.isoformat(timespec="seconds") if completion else None,
        "index": index,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "progress": progress.as_dict(),
    }


def read_state(location: str, s3: S3Connection) -> dict[str, Any]:
    """A state file another machine wrote (``imgvec progress --state-file``)."""
    remote = _s3_location(location, s3)
    try:
        if remote is None:
            data = Path(location).expanduser().read_bytes()
        else:
            from imgvec.sources.s3 import make_client, read_object

            data = read_object(make_client(s3), remote, max_bytes=MAX_STATE_BYTES)
    except FileNotFoundError:
        raise ImgvecError(f"no state file at {location}: has a run with --state-file {location} started?") from None
    try:
        found = json.loads(data)
    except ValueError:
        raise ImgvecError(f"{location} is not an imgvec state file (not JSON)") from None
    if not isinstance(found, dict) or not isinstance(found.get("progress"), dict):
        raise ImgvecError(f"{location} is not an imgvec state file (no progress in it)")
    return found


def _s3_location(location: str, s3: S3Connection) -> ObjectLocation | None:
    remote = parse_s3_url(location, s3.endpoint_url)
    if remote is not None and not remote.key:
        raise UsageError(f"--state-file {location}: name an object, s3://bucket/key.json")
    if remote is None and "://" in location:
        raise UsageError(f"--state-file {location}: an s3:// URL or a local path")
    return remote

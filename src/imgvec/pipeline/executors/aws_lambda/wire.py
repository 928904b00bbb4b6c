"""What crosses between the Lambda executor and the function, as JSON: one place, read by both ends.

A batch request names each image by its S3 location, never its bytes (6 MB is the synchronous payload limit, and
the function reads S3 faster than the driver could send): ``{"items": [{"id": "0", "bucket": …, "key": …} |
{"id": "1", "imageUrl": …}]}``. The answer holds, per item, its vector (little-endian float32 in base64: a
third of the bytes of a JSON list, and exact), content hash and picture facts, or its failure with stage and
reason, as the Ray actors return them; and the identity of the model that embedded them, which the driver checks.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import numpy as np

from imgvec.documents import Failure, Picture, SourceItem

VECTOR_DTYPE = np.dtype("<f4")


def location_of(item: SourceItem) -> dict[str, str] | None:
    """Where the function reads the item: its bucket and key, or the S3 URL a document holds; None if not in S3."""
    if item.bucket and item.file_key:
        return {"bucket": item.bucket, "key": item.file_key}
    if item.s3_url:
        return {"imageUrl": item.s3_url}
    return None


def request_of(items: list[SourceItem]) -> dict[str, Any]:
    """A batch request; each item's id is its position in ``items``. Items not in S3 are left out (``location_of``)."""
    entries = []
    for position, item in enumerate(items):
        location = location_of(item)
        if location is not None:
            entries.append({"id": str(position), **location})
    return {"items": entries}


def embedded_json(
    item_id: str,
    vector: np.ndarray,
    content_hash: str,
    picture: Picture,
    timings: tuple[float, float, float],
    warnings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One embedded item in the answer. ``timings``: read, decode and embed seconds."""
    facts = picture.fields()
    taken = facts["taken_at"]
    return {
        "id": item_id,
        "vector": base64.b64encode(np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()).decode("ascii"),
        "content_hash": content_hash,
        "picture": {**facts, "taken_at": taken.isoformat() if taken is not None else None},
        "seconds": [round(value, 6) for value in timings],
        "warnings": list(warnings),
    }


def failure_json(item_id: str, stage: str, reason: str) -> dict[str, Any]:
    return {"id": item_id, "stage": stage, "reason": reason}


def vector_of(entry: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["vector"]), dtype=VECTOR_DTYPE).astype(np.float32)


def picture_of(entry: dict[str, Any]) -> Picture:
    facts = entry["picture"]
    taken = facts.get("taken_at")
    latitude, longitude = facts.get("latitude"), facts.get("longitude")
    return Picture(
        perceptual_hash=int(facts["perceptual_hash"]),
        width=int(facts["width"]),
        height=int(facts["height"]),
        taken_at=datetime.fromisoformat(taken) if taken else None,
        camera_make=facts.get("camera_make"),
        camera_model=facts.get("camera_model"),
        latitude=float(latitude) if latitude is not None else None,
        longitude=float(longitude) if longitude is not None else None,
    )


def failure_of(item: SourceItem, entry: dict[str, Any]) -> Failure:
    stage = str(entry.get("stage") or "embed")
    return Failure.of(item, stage, str(entry.get("reason") or "the function gave no reason"))

"""Duplicate groups of an index, of three kinds, each with the score that says why its members belong together.

- ``exact``: the same bytes (SHA-256 content hash). Score: none needed.
- ``resaved``: the same picture saved again: re-encoded, resized, lightly cropped, turned by EXIF (perceptual hashes
  at most ``threshold`` bits apart; exact copies too). Score: each member's bits from the keeper. Works whatever
  the model's weights.
- ``similar``: visually near (cosine of the CLIP vectors at least ``threshold``): bursts, the same scene shot twice.
  Score: each member's cosine with the keeper. Meaningful only with trained weights; the report says so otherwise.

A group is a connected set of near pairs. Its keeper is the member a person would keep (most pixels, then the
earliest capture, then the shortest path); its saving is the bytes that deleting all the others would free, and
groups come largest saving first. Nothing here deletes or moves a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgvec.duplicates.catalogue import Catalogue, read_catalogue
from imgvec.duplicates.components import components
from imgvec.duplicates.pairs import Pairs, empty_pairs, hash_pairs, vector_pairs
from imgvec.errors import UsageError
from imgvec.stores.base import SearchFilter, Store

KINDS = ("exact", "resaved", "similar")
DEFAULT_THRESHOLDS: dict[str, float] = {"resaved": 8, "similar": 0.95}
"""Bits for ``resaved`` (benchmarks/duplicates.py: planted re-saves ≤ 10 bits, unrelated pictures ≥ 16), cosine
for ``similar``."""


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    file_path: str
    file_size: int
    width: int | None
    height: int | None
    taken_at: datetime | None
    score: float | None
    """Bits from the keeper (resaved) or cosine with it (similar); None for exact copies and for the keeper."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file_path": self.file_path,
            "file_size": self.file_size,
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    kind: str
    members: list[Member]
    """The keeper first, then the others as the keeper rule ranks them."""
    saving: int

    @property
    def keeper(self) -> Member:
        return self.members[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "saving": self.saving,
            "keep": self.keeper.id,
            "members": [member.as_dict() for member in self.members],
        }


@dataclass
class Duplicates:
    """Every group of one kind, ranked, with the members' details read a page at a time (``page``)."""

    kind: str
    threshold: float | None
    documents: int
    """Documents looked at (those with a vector, for ``similar``)."""
    unhashed: int
    """Documents an older imgvec indexed without a perceptual hash (``resaved`` cannot place them until a run fills
    it in)."""
    random_weights: bool
    store: Store
    _catalogue: Catalogue = field(repr=False)
    _groups: list[np.ndarray] = field(repr=False)
    """Row numbers per group, the keeper first, largest saving first."""
    _savings: list[int] = field(repr=False)

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def total_saving(self) -> int:
        return sum(self._savings)

    def page(self, offset: int = 0, limit: int | None = None) -> list[DuplicateGroup]:
        """Groups ``offset`` to ``offset + limit``, with their members' details from the store."""
        chosen = range(len(self._groups))[offset : None if limit is None else offset + limit]
        ids = [self._catalogue.ids[int(row)].as_py() for g in chosen for row in self._groups[g]]
        details = self.store.get_many(ids)
        groups = []
        for g in chosen:
            rows = self._groups[g]
            members = [self._member(int(row), int(rows[0]), details) for row in rows]
            members = [m for m in members if m is not None]
            if self.kind == "exact":
                members = _same_bytes(members, details)
            if len(members) > 1:
                groups.append(DuplicateGroup(self.kind, members, self._savings[g]))
        return groups

    def _member(self, row: int, keeper: int, details: dict[str, dict[str, Any]]) -> Member | None:
        doc_id = self._catalogue.ids[row].as_py()
        fields = details.get(doc_id)
        if fields is None:  # deleted since the scan
            return None
        taken = fields.get("taken_at")
        return Member(
            id=doc_id,
            file_path=str(fields.get("file_path") or fields.get("s3_url") or doc_id),
            file_size=int(fields.get("file_size") or 0),
            width=fields.get("width"),
            height=fields.get("height"),
            taken_at=datetime.fromisoformat(taken) if isinstance(taken, str) else taken,
            score=None if row == keeper else self._score(row, keeper),
        )

    def _score(self, row: int, keeper: int) -> float | None:
        catalogue = self._catalogue
        if self.kind == "resaved":
            return float(np.bitwise_count(np.uint64(catalogue.perceptual[row] ^ catalogue.perceptual[keeper])))
        if self.kind == "similar" and catalogue.vectors is not None:
            vectors = catalogue.vectors
            return round(float(np.dot(vectors[row].astype(np.float32), vectors[keeper].astype(np.float32))), 4)
        return None

    def as_dict(self, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "documents": self.documents,
            "unhashed": self.unhashed,
            "random_weights": self.random_weights,
            "groups_total": len(self),
            "saving_total": self.total_saving,
            "offset": offset,
            "groups": [group.as_dict() for group in self.page(offset, limit)],
        }


def find_duplicates(
    store: Store,
    kind: str = "resaved",
    *,
    threshold: float | None = None,
    where: SearchFilter | None = None,
    scratch: Path | None = None,
) -> Duplicates:
    """Groups of ``kind`` among the documents of ``store`` (under ``where``'s path prefix)."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind of duplicate {kind!r}; choose one of {', '.join(KINDS)}")
    threshold = _checked_threshold(kind, threshold)
    identity = store.identity()
    catalogue = read_catalogue(store, where, with_vectors=kind == "similar", scratch=scratch)
    groups, savings = ranked_groups(catalogue, kind, threshold)
    return Duplicates(
        kind=kind,
        threshold=threshold,
        documents=len(catalogue),
        # read by an imgvec from before the hash (a content hash, no perceptual one); not the documents never read
        unhashed=int((~catalogue.hashed & (catalogue.content != 0)).sum()) if kind == "resaved" else 0,
        random_weights=bool(identity and identity.random_weights) and kind == "similar",
        store=store,
        _catalogue=catalogue,
        _groups=groups,
        _savings=savings,
    )


def _checked_threshold(kind: str, threshold: float | None) -> float | None:
    if kind == "exact":
        if threshold is not None:
            raise UsageError("a threshold does not apply to exact duplicates (the same bytes)")
        return None
    value = DEFAULT_THRESHOLDS[kind] if threshold is None else threshold
    if kind == "resaved" and not (value == int(value) and 0 <= value <= 32):
        raise UsageError(f"the threshold of resaved duplicates is bits apart: a whole number from 0 to 32, not {value}")
    if kind == "similar" and not 0 < value <= 1:
        raise UsageError(f"the threshold of similar pictures is a cosine above 0 and at most 1 (not {value})")
    return int(value) if kind == "resaved" else float(value)


def _pairs(catalogue: Catalogue, kind: str, threshold: float | None) -> Pairs:
    if kind == "exact":
        rows = np.flatnonzero(catalogue.content != 0)
        a, b, score = hash_pairs(catalogue.content[rows], 0)
    elif kind == "resaved":
        rows = np.flatnonzero(catalogue.hashed)
        a, b, score = hash_pairs(catalogue.perceptual[rows], int(threshold or 0))
    else:
        if catalogue.vectors is None or not len(catalogue.vectors):
            return empty_pairs()
        return vector_pairs(catalogue.vectors, float(threshold or 1.0))
    return rows[a], rows[b], score


def ranked_groups(catalogue: Catalogue, kind: str, threshold: float | None) -> tuple[list[np.ndarray], list[int]]:
    """Row numbers per group, keeper first, and each group's saving, largest saving first (``threshold`` checked)."""
    a, b, _ = _pairs(catalogue, kind, threshold)
    if not len(a):
        return [], []
    labels = components(len(catalogue), a, b)
    rows = np.unique(np.concatenate([a, b]))
    # keeper rule: most pixels, then earliest capture, then shortest path (then the row, for a stable order)
    order = np.lexsort(
        (rows, catalogue.path_length[rows], catalogue.taken[rows], -catalogue.pixels[rows], labels[rows])
    )
    rows = rows[order]
    starts = np.flatnonzero(np.r_[True, labels[rows][1:] != labels[rows][:-1]])
    groups = np.split(rows, starts[1:])
    savings = [int(catalogue.size[group].sum() - catalogue.size[group[0]]) for group in groups]
    ranked = sorted(range(len(groups)), key=lambda g: (-savings[g], -len(groups[g]), int(groups[g][0])))
    return [groups[g] for g in ranked], [savings[g] for g in ranked]


def _same_bytes(members: list[Member], details: dict[str, dict[str, Any]]) -> list[Member]:
    """An exact group keeps only the members whose whole content hash is the keeper's: the grouping compared the
    first 64 bits of each."""
    wanted = details[members[0].id].get("content_hash") if members else None
    return [m for m in members if details[m.id].get("content_hash") == wanted]

"""Near pairs without comparing all pairs: by perceptual hash (multi-index hashing) and by vector (blockwise search
within partitions). Each returns pairs ``(a, b, score)`` of row numbers, ``a < b``, that ``components`` joins.

Both read only numpy arrays: the stores' ``scan`` fills them, ``benchmarks/duplicates.py`` times them at 1 M.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from math import comb

import numpy as np

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Rows ``a`` and ``b`` (int64, ``a < b``) and the pair's score (bits apart, or cosine)."""
MAX_TABLE_BITS = 22
"""A chunk of the hash indexes a table of 2**bits bucket starts: 16 MB at 22 bits."""
CANDIDATES_PER_STEP = 4_000_000
"""Candidate pairs checked at once: bounds the memory of a dense bucket (thousands of dark pictures alike)."""
BLOCK_ROWS = 2048
"""Rows of one block of a similarity matrix (2048 x a partition, float32)."""
EXACT_MAX_ROWS = 16_384
"""Up to here every pair of vectors is compared; above, within partitions."""
ROWS_PER_PARTITION = 1_000
TRAINING_ROWS_PER_PARTITION = 32
KMEANS_ROUNDS = 8
PROBES = 5
"""Partitions each vector is compared in: two near vectors on either side of a boundary still meet."""


def empty_pairs(score_type: type = np.int64) -> Pairs:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, score_type)


# -- perceptual hashes ---------------------------------------------------------------------------------------------


def hash_pairs(hashes: np.ndarray, threshold: int) -> Pairs:
    """Pairs of rows whose 64-bit hashes differ in at most ``threshold`` bits: enough of them to join every group
    that all such pairs would join (rows with equal hashes are joined to the first of them, not each to each).

    Multi-index hashing (Norouzi, Punjani and Fleet, 2012): cut the 64 bits into ``m`` chunks; two hashes within
    ``threshold`` bits agree within ``threshold // m`` bits on at least one chunk (pigeonhole), so each chunk's
    table is probed with every flip of at most that many bits, and only those candidates are compared in full.
    Exact: no pair within the threshold is missed. Equal hashes (copies) are folded first, so a thousand copies
    cost one row.
    """
    values = np.ascontiguousarray(hashes, dtype=np.int64).view(np.uint64)
    unique, inverse = np.unique(values, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    firsts = order[np.searchsorted(inverse[order], np.arange(len(unique)))]  # the lowest row of each value
    # rows whose hash another row has: joined to the first row of their value, 0 bits apart
    rows = np.arange(len(values))
    first_of_row = firsts[inverse]
    copy = first_of_row != rows
    same = (first_of_row[copy], rows[copy], np.zeros(int(copy.sum()), np.int64))
    # distinct values within the threshold: between the first rows holding them
    a, b, score = _unique_hash_pairs(unique, threshold) if len(unique) > 1 and threshold > 0 else empty_pairs()
    near = (np.minimum(firsts[a], firsts[b]), np.maximum(firsts[a], firsts[b]), score)
    a, b, score = (np.concatenate(parts) for parts in zip(same, near, strict=True))
    return a, b, score


def chunking(rows: int, threshold: int) -> list[int]:
    """The chunk widths (bits) that make the fewest probes plus candidates for ``rows`` distinct hashes."""
    best: tuple[float, list[int]] | None = None
    for chunks in range(1, 65):
        widths = [64 // chunks + (1 if i < 64 % chunks else 0) for i in range(chunks)]
        if widths[0] > MAX_TABLE_BITS:
            continue
        radius = threshold // chunks
        probes = sum(sum(comb(width, flips) for flips in range(radius + 1)) for width in widths)
        cost = probes * rows * (1 + rows / 2 ** widths[-1])
        if best is None or cost < best[0]:
            best = (cost, widths)
        if radius == 0:
            break
    assert best is not None
    return best[1]


def _unique_hash_pairs(values: np.ndarray, threshold: int) -> Pairs:
    rows = len(values)
    widths = chunking(rows, threshold)
    radius = threshold // len(widths)
    found: list[Pairs] = []
    shift = 64
    for width in widths:
        shift -= width
        keys = ((values >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        starts = np.searchsorted(keys[order], np.arange(2**width + 1))
        for mask in _masks(width, radius):
            probe = keys ^ mask
            begin, end = starts[probe], starts[probe + 1]
            found.extend(_candidates(values, order, begin, end, threshold))
    if not found:
        return empty_pairs()
    a, b, score = (np.concatenate(parts) for parts in zip(*found, strict=True))
    unique_pairs = np.unique(a * rows + b, return_index=True)[1]  # found through several chunks: once each
    return a[unique_pairs], b[unique_pairs], score[unique_pairs]


def _masks(width: int, radius: int) -> Iterator[int]:
    for flips in range(radius + 1):
        for bits in itertools.combinations(range(width), flips):
            yield sum(1 << bit for bit in bits)


def _candidates(
    values: np.ndarray, order: np.ndarray, begin: np.ndarray, end: np.ndarray, threshold: int
) -> Iterator[Pairs]:
    """Each row against the rows in its probed bucket, in steps of at most ``CANDIDATES_PER_STEP`` pairs."""
    counts = end - begin
    rows = np.flatnonzero(counts)
    if not len(rows):
        return
    totals = np.cumsum(counts[rows])
    cuts = np.searchsorted(totals, np.arange(1, totals[-1] // CANDIDATES_PER_STEP + 1) * CANDIDATES_PER_STEP, "right")
    for part in np.split(rows, cuts):
        if not len(part):
            continue
        sizes = counts[part]
        left = np.repeat(part, sizes)
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        right = order[np.repeat(begin[part], sizes) + offsets]
        keep = left < right
        left, right = left[keep], right[keep]
        bits = np.bitwise_count(values[left] ^ values[right]).astype(np.int64)
        near = bits <= threshold
        yield left[near], right[near], bits[near]


# -- vectors -------------------------------------------------------------------------------------------------------


def vector_pairs(vectors: np.ndarray, threshold: float, *, seed: int = 0) -> Pairs:
    """Every pair of rows (unit vectors; a memory map will do) with cosine at least ``threshold``, found within
    partitions, not among all n² pairs: a spherical k-means on a sample; each vector is a member of its nearest
    partition and is compared with the members of its ``PROBES`` nearest. A near pair is missed only when neither
    vector's nearest partitions hold the other (the benchmark counts what that misses against all pairs). Up to
    ``EXACT_MAX_ROWS`` every pair is compared."""
    rows = len(vectors)
    if rows < 2:
        return empty_pairs(np.float32)
    if rows <= EXACT_MAX_ROWS:
        everything = np.arange(rows)
        return _merge(list(_between(vectors, everything, everything, threshold)), rows)
    centroids = _centroids(vectors, max(2, round(rows / ROWS_PER_PARTITION)), seed)
    nearest = _assign(vectors, centroids)
    members = _by_partition(nearest[:, 0], len(centroids))
    probes = _by_partition(nearest.reshape(-1), len(centroids))
    found: list[Pairs] = []
    for partition in range(len(centroids)):
        inside = members[partition]
        if len(inside):
            found.extend(_between(vectors, probes[partition] // nearest.shape[1], inside, threshold))
    return _merge(found, rows)


def _by_partition(assigned: np.ndarray, partitions: int) -> list[np.ndarray]:
    order = np.argsort(assigned, kind="stable")
    bounds = np.searchsorted(assigned[order], np.arange(partitions + 1))
    return [order[bounds[p] : bounds[p + 1]] for p in range(partitions)]


def _between(vectors: np.ndarray, queries: np.ndarray, members: np.ndarray, threshold: float) -> Iterator[Pairs]:
    """Every pair of a query row and a member row (another row) at cosine ``threshold`` or more, a block of
    queries at a time."""
    against = np.asarray(vectors[members], dtype=np.float32)
    for start in range(0, len(queries), BLOCK_ROWS):
        rows = queries[start : start + BLOCK_ROWS]
        scores = np.asarray(vectors[rows], dtype=np.float32) @ against.T
        i, j = np.nonzero(scores >= threshold)
        a, b = rows[i], members[j]
        other = a != b
        yield np.minimum(a, b)[other], np.maximum(a, b)[other], scores[i, j][other].astype(np.float32)


def _merge(found: list[Pairs], rows: int) -> Pairs:
    if not found:
        return empty_pairs(np.float32)
    a, b, score = (np.concatenate(parts) for parts in zip(*found, strict=True))
    keep = np.unique(a.astype(np.int64) * rows + b, return_index=True)[1]
    return a[keep].astype(np.int64), b[keep].astype(np.int64), score[keep]


def _centroids(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Spherical k-means on an even sample of the rows (their order is their ids', which are hashes)."""
    rows = len(vectors)
    step = max(1, rows // (count * TRAINING_ROWS_PER_PARTITION))
    sample = np.asarray(vectors[::step], dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(len(sample), size=min(count, len(sample)), replace=False)]
    for _ in range(KMEANS_ROUNDS):
        nearest = _nearest(sample, centroids, 1)[:, 0]
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        filled = norms[:, 0] > 0
        centroids[filled] = sums[filled] / norms[filled]  # an empty partition keeps its centroid
    return centroids


def _assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            _nearest(np.asarray(vectors[start : start + 65_536], dtype=np.float32), centroids, PROBES)
            for start in range(0, len(vectors), 65_536)
        ]
    ).astype(np.int32)


def _nearest(block: np.ndarray, centroids: np.ndarray, count: int) -> np.ndarray:
    out = []
    for start in range(0, len(block), 8192):
        scores = block[start : start + 8192] @ centroids.T
        top = np.argpartition(-scores, min(count, len(centroids)) - 1, axis=1)[:, :count]
        ranked = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]  # nearest first
        out.append(np.take_along_axis(top, ranked, axis=1))
    return np.concatenate(out)

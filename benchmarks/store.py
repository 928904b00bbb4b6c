"""Embedded store at scale: build time, query latency and recall@10 for N x 512 vectors (default 1,000,000).

    python benchmarks/store.py [--rows 1000000] [--queries 200] [--distribution clustered|uniform] [--index auto|pq]

Everything goes through imgvec's EmbeddedStore (upsert in 10k batches, optimize, search) and is compared in
the same run with exact search: numpy brute force over the same vectors (the recall truth) and the store's
own exact scan (lancedb bypass_vector_index). Ratios, not absolute times, are the figures to quote.

"clustered" draws vectors around 2,000 random centres, which is how CLIP embeddings of photo collections
behave (near-duplicates, themes); "uniform" is isotropic noise, the worst case for any ANN index.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from imgvec.documents import ImageDocument, SourceItem
from imgvec.identity import IndexIdentity
from imgvec.stores import embedded, embedded_indexes
from imgvec.stores.base import SearchFilter
from imgvec.stores.embedded import EmbeddedStore

DIM = 512
BATCH = 10_000


def make_vectors(rng: np.random.Generator, n: int, centres: np.ndarray | None) -> np.ndarray:
    if centres is None:
        x = rng.standard_normal((n, DIM), dtype=np.float32)
    else:
        x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--distribution", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument(
        "--index", choices=["auto", "pq"], default="auto", help="auto: the store's own choice; pq: force IVF-PQ"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store (default: a temp dir)")
    args = parser.parse_args()

    if args.index == "pq":
        embedded_indexes.SQ_INDEX_MAX_ROWS = 0
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM), dtype=np.float32) if args.distribution == "clustered" else None
    workdir = Path(tempfile.mkdtemp(prefix="imgvec-bench-", dir=args.dir))
    store = EmbeddedStore(workdir, "bench")
    store.ensure_index(IndexIdentity("bench/random", "bench", "random", DIM))
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores")
    print(f"rows: {args.rows:,} x {DIM}, distribution: {args.distribution}, store: {workdir}")

    all_vectors = np.empty((args.rows, DIM), dtype=np.float32)
    extensions = np.array(["jpg", "png", "heic", "webp"])
    write_seconds = 0.0
    for start in range(0, args.rows, BATCH):
        n = min(BATCH, args.rows - start)
        vectors = make_vectors(rng, n, centres)
        all_vectors[start : start + n] = vectors
        docs = [
            ImageDocument(SourceItem.of_path(f"/nas/{i // 1000}/{i}.{extensions[i % 4]}", 1, 0.0), vectors[i - start])
            for i in range(start, start + n)
        ]
        began = time.perf_counter()
        store.upsert(docs)
        write_seconds += time.perf_counter() - began
    began = time.perf_counter()
    store.optimize()
    index_seconds = time.perf_counter() - began
    print(
        f"write: {write_seconds:.1f}s ({args.rows / write_seconds:,.0f} docs/s); "
        f"optimize + ANN index build: {index_seconds:.1f}s; total build {write_seconds + index_seconds:.1f}s"
    )

    queries = make_vectors(rng, args.queries, centres)
    truth = [set(np.argpartition(-(all_vectors @ q), 10)[:10].tolist()) for q in queries]

    def ids(hits: list) -> set[int]:
        return {int(h.document["file_name"].split(".")[0]) for h in hits}

    ann_lat, ann_recall = [], []
    for q, exact in zip(queries, truth, strict=True):
        began = time.perf_counter()
        hits = store.search(q, 10)
        ann_lat.append(time.perf_counter() - began)
        ann_recall.append(len(ids(hits) & exact) / 10)

    brute_lat = []
    for q in queries[:50]:
        began = time.perf_counter()
        np.argpartition(-(all_vectors @ q), 10)[:10]
        brute_lat.append(time.perf_counter() - began)

    table = store._open()
    scan_lat = []
    for q in queries[:20]:
        began = time.perf_counter()
        table.search(q).distance_type("cosine").bypass_vector_index().limit(10).to_arrow()
        scan_lat.append(time.perf_counter() - began)

    filt_lat = []
    jpg_only = SearchFilter(extensions=("jpg",))
    for q in queries[:50]:
        began = time.perf_counter()
        hits = store.search(q, 10, jpg_only)
        filt_lat.append(time.perf_counter() - began)
        assert len(hits) == 10 and all(h.document["file_extension"] == "jpg" for h in hits)

    ann_p50 = percentile_ms(ann_lat, 50)
    index = embedded_indexes.vector_index(store._open())
    kind = index.index_type if index else "none (exact scan)"
    print(
        f"ANN search ({kind}): p50 {ann_p50:.1f} ms, p99 {percentile_ms(ann_lat, 99):.1f} ms, "
        f"recall@10 {np.mean(ann_recall):.3f}"
    )
    print(
        f"ANN + filter (extension):        p50 {percentile_ms(filt_lat, 50):.1f} ms, "
        f"p99 {percentile_ms(filt_lat, 99):.1f} ms, always 10 hits"
    )
    print(f"exact, store scan:               p50 {percentile_ms(scan_lat, 50):.1f} ms")
    print(f"exact, numpy in RAM:             p50 {percentile_ms(brute_lat, 50):.1f} ms (needs all vectors in memory)")
    print(
        f"ratios: ANN is {percentile_ms(scan_lat, 50) / ann_p50:.1f}x faster than the store's exact scan, "
        f"{percentile_ms(brute_lat, 50) / ann_p50:.1f}x numpy brute force; recall@10 {np.mean(ann_recall):.3f}"
    )
    size = sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file())
    embedded.KEEP_VERSIONS_FOR = timedelta(0)  # what the store keeps once superseded versions age out (10 min)
    store.optimize()
    kept = sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file())
    print(
        f"on disk: {kept / 2**30:.2f} GiB ({kept / args.rows:.0f} bytes/doc) once superseded versions are cleaned; "
        f"{size / 2**30:.2f} GiB right after the build"
    )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Searching a million photos: imgvec's embedded store, unfiltered and filtered, against faiss and OpenSearch, and the
API's warm text query. One run; every system answers the same queries over the same vectors.

    python benchmarks/search.py [--rows 1000000] [--queries 200] [--dir DIR] [--skip faiss,opensearch,text,ingest]
                                [--opensearch-rows 100000] [--text-rows 100000] [--sweep]

The corpus: ``--rows`` clustered 512-dim unit vectors (2,000 centres, as benchmarks/store.py: how CLIP embeddings of
a photo collection behave) with the fields people filter photos by, drawn in a family archive's proportions: the
extension (jpg 60 %, heic 25 %, png 10 %, webp 5 %), the capture time (2012-2024; none for 10 %), the camera (30
models, a few common), the place (60 % with one, around 50 cities) and the folder (/nas/<year>/<event>/).

1. The embedded store (``EmbeddedStore.search``, scalar and vector indexes as ``optimize`` builds them): recall@10
   against exact search *among the documents the filter matches*, p50/p99, for no filter, one extension, one year,
   both, one camera, one place; then the same unfiltered queries while another thread writes batches and compacts.
2. faiss (``faiss-cpu``, same vectors, inner product): HNSW32 at the efSearch whose recall matches the store's, and
   IVF-Flat (√n lists) likewise; filtered through an ID selector. Its indexes live in RAM; the store's on disk.
3. The OpenSearch test node (lucene HNSW, scripts/opensearch.sh or OPENSEARCH_URL) at ``--opensearch-rows``, with
   the filters inside the k-NN clause, through ``OpenSearchStore.search``.
4. ``imgvec serve`` on the store (``--text-rows`` and ``--rows``): a text query's p50 over HTTP, warm, one client,
   the real ViT-B-32 text tower (random weights: the cost is the same as trained ones).

``--dir`` keeps the built store (and reuses it when it holds the same corpus). ``--sweep`` measures, before all else,
each IVF variant and probe count on the corpus, which is how ``stores/embedded_indexes.py`` chose its settings.
The last line is for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from imgvec import wiring
from imgvec.documents import ImageDocument, Picture, SourceItem
from imgvec.identity import IndexIdentity
from imgvec.settings import Settings
from imgvec.stores import embedded_indexes
from imgvec.stores.base import Circle, SearchFilter
from imgvec.stores.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parent.parent
DIM = 512
CHUNK = 10_000
EXTENSIONS = np.array(["jpg", "heic", "png", "webp"])
EXTENSION_SHARES = [0.60, 0.25, 0.10, 0.05]
START = datetime(2012, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 13 * 365 * 86400
CAMERAS = [(f"Make{n % 7}", f"Model {n}") for n in range(30)]
CAMERA_SHARES = np.array([1 / (n + 1) for n in range(30)]) / sum(1 / (n + 1) for n in range(30))
CITIES = np.random.default_rng(7).uniform([-50, -170], [60, 170], (50, 2))
MODEL = "ViT-B-32/random"
K = 10
SPREAD = 0.6
"""Each vector's distance from its centre, per dimension (``--spread``): 0.6 as benchmarks/store.py; 1.0 puts the
clusters' edges into each other, the harder case for an IVF index's recall."""


# -- the corpus ---------------------------------------------------------------------------------------------------


class Corpus:
    """Vectors and fields, drawn chunk by chunk from fixed seeds: the same corpus in every run."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.centres = np.random.default_rng(0).standard_normal((2000, DIM), dtype=np.float32)
        self.vectors = np.empty((rows, DIM), dtype=np.float32)
        self.extension = np.empty(rows, dtype=np.int8)
        self.taken = np.empty(rows, dtype=np.int64)  # seconds since START; -1: none
        self.camera = np.empty(rows, dtype=np.int8)  # -1: none
        self.place = np.full((rows, 2), np.nan)
        for start in range(0, rows, CHUNK):
            self._draw(start, min(CHUNK, rows - start))

    def _draw(self, start: int, n: int) -> None:
        rng = np.random.default_rng(1_000 + start // CHUNK)
        x = self.centres[rng.integers(0, len(self.centres), n)] + SPREAD * rng.standard_normal((n, DIM), np.float32)
        self.vectors[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.extension[start : start + n] = rng.choice(4, n, p=EXTENSION_SHARES)
        dated = rng.random(n) < 0.9
        self.taken[start : start + n] = np.where(dated, rng.integers(0, SPAN_SECONDS, n), -1)
        self.camera[start : start + n] = np.where(dated, rng.choice(30, n, p=CAMERA_SHARES), -1)
        placed = dated & (rng.random(n) < 0.66)
        city = CITIES[rng.integers(0, len(CITIES), n)] + rng.normal(0, 0.05, (n, 2))
        self.place[start : start + n][placed] = city[placed]

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(99)
        x = self.centres[rng.integers(0, len(self.centres), n)] + SPREAD * rng.standard_normal((n, DIM), np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def documents(self, start: int, stop: int, offset: int = 0) -> list[ImageDocument]:
        docs = []
        for i in range(start, stop):
            taken = START + timedelta(seconds=int(self.taken[i])) if self.taken[i] >= 0 else None
            make, model = CAMERAS[self.camera[i]] if self.camera[i] >= 0 else (None, None)
            latitude, longitude = (None, None) if np.isnan(self.place[i, 0]) else map(float, self.place[i])
            year = taken.year if taken else "undated"
            path = f"/nas/{year}/event{i % 97}/{offset + i}.{EXTENSIONS[self.extension[i]]}"
            picture = Picture(i, 4000, 3000, taken, make, model, latitude, longitude)
            docs.append(
                ImageDocument(SourceItem.of_path(path, 1, 0.0), self.vectors[i], f"h{offset + i}", picture=picture)
            )
        return docs

    def mask(self, where: SearchFilter) -> np.ndarray:
        keep = np.ones(self.rows, dtype=bool)
        if where.extensions:
            keep &= np.isin(EXTENSIONS[self.extension], list(where.extensions))
        if where.taken_from or where.taken_before:
            low = (where.taken_from - START).total_seconds() if where.taken_from else 0
            high = (where.taken_before - START).total_seconds() if where.taken_before else 2**62
            keep &= (self.taken >= low) & (self.taken < high)
        if where.cameras:
            names = {i for i, (make, model) in enumerate(CAMERAS) if {make, model} & set(where.cameras)}
            keep &= np.isin(self.camera, list(names))
        if where.near is not None:
            lat, lon = np.radians(self.place[:, 0]), np.radians(self.place[:, 1])
            c_lat, c_lon = np.radians(where.near.latitude), np.radians(where.near.longitude)
            half = np.sin((lat - c_lat) / 2) ** 2 + np.cos(lat) * np.cos(c_lat) * np.sin((lon - c_lon) / 2) ** 2
            with np.errstate(invalid="ignore"):
                keep &= 2 * 6371.0088 * np.arcsin(np.sqrt(np.minimum(half, 1))) <= where.near.km
        return keep


def filters() -> dict[str, SearchFilter]:
    city = CITIES[3]
    return {
        "none": SearchFilter(),
        "one extension (heic)": SearchFilter(extensions=("heic",)),
        "one year (2019)": SearchFilter(
            taken_from=datetime(2019, 1, 1, tzinfo=UTC), taken_before=datetime(2020, 1, 1, tzinfo=UTC)
        ),
        "extension and year": SearchFilter(
            extensions=("heic",),
            taken_from=datetime(2019, 1, 1, tzinfo=UTC),
            taken_before=datetime(2020, 1, 1, tzinfo=UTC),
        ),
        "one camera": SearchFilter(cameras=("Model 4",)),
        "one place (25 km)": SearchFilter(near=Circle(float(city[0]), float(city[1]), 25.0)),
    }


def truth(corpus: Corpus, queries: np.ndarray, keep: np.ndarray) -> list[set[int]]:
    """The exact top-10 among the matching rows, by brute force."""
    rows = np.flatnonzero(keep)
    found = []
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ corpus.vectors[rows].T
        best = np.argpartition(-scores, min(K, len(rows) - 1), axis=1)[:, :K] if len(rows) > K else None
        for i in range(len(scores)):
            found.append(set(rows[best[i]].tolist()) if best is not None else set(rows.tolist()))
    return found


def row_of(hit_document: dict) -> int:
    return int(Path(hit_document["file_path"]).stem)


def timed(search: Callable[[np.ndarray], list[int]], queries: np.ndarray, exact: list[set[int]]) -> dict:
    for q in queries[:10]:  # warm the caches
        search(q)
    latencies, recalls, short = [], [], 0
    for q, best in zip(queries, exact, strict=True):
        began = time.perf_counter()
        rows = search(q)
        latencies.append(time.perf_counter() - began)
        recalls.append(len(set(rows) & best) / max(1, min(K, len(best))))
        short += len(rows) < min(K, len(best))
    ms = np.asarray(latencies) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "recall": float(np.mean(recalls)),
        "short": short,
    }


def line(name: str, result: dict) -> str:
    short = f", {result['short']} short of k" if result.get("short") else ""
    return f"   {name:<34} p50 {result['p50']:7.2f}  p99 {result['p99']:7.2f}  recall@10 {result['recall']:.3f}{short}"


# -- 1. the embedded store ---------------------------------------------------------------------------------------


def build_store(corpus: Corpus, folder: Path, identity: IndexIdentity) -> EmbeddedStore:
    marker = folder / "corpus.json"
    store = EmbeddedStore(folder / "store", "photos")
    if marker.exists() and json.loads(marker.read_text()) == {"rows": corpus.rows, "spread": SPREAD}:
        print(f"store: reusing {folder}")
        return store
    shutil.rmtree(folder / "store", ignore_errors=True)
    store.ensure_index(identity)
    began = time.perf_counter()
    for start in range(0, corpus.rows, CHUNK):
        store.upsert(corpus.documents(start, min(corpus.rows, start + CHUNK)))
    written = time.perf_counter() - began
    began = time.perf_counter()
    store.optimize()
    built = time.perf_counter() - began
    print(f"store: {corpus.rows:,} documents written in {written:.0f}s, indexes built in {built:.0f}s")
    marker.write_text(json.dumps({"rows": corpus.rows, "spread": SPREAD}))
    return store


def sweep(store: EmbeddedStore, corpus: Corpus, queries: np.ndarray) -> None:
    """Each IVF variant at a few probe counts, through lancedb directly (the store's own settings aside)."""
    from lancedb.index import IvfFlat, IvfPq, IvfRq, IvfSq

    table = store._open()
    exact = truth(corpus, queries, np.ones(corpus.rows, dtype=bool))
    partitions = int(corpus.rows**0.5)
    variants = {
        "IVF_FLAT": (IvfFlat(distance_type="cosine", num_partitions=partitions), [None]),
        "IVF_SQ": (IvfSq(distance_type="cosine", num_partitions=partitions), [None, 4]),
        "IVF_PQ 64x8": (IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=64), [10, 50]),
        "IVF_RQ": (IvfRq(distance_type="cosine", num_partitions=partitions), [None, 4, 10]),
    }
    print(f"\nsweep: {partitions} partitions; ms and recall@10 over {len(queries)} queries (lancedb directly)")
    for name, (config, refines) in variants.items():
        began = time.perf_counter()
        table.create_index("vector", config=config, replace=True)
        print(f"   {name}: built in {time.perf_counter() - began:.0f}s")
        for refine in refines:
            for probes in (5, 10, 20, 40):

                def search(q: np.ndarray, probes: int = probes, refine: int | None = refine) -> list[int]:
                    query = table.search(q, vector_column_name="vector").distance_type("cosine").nprobes(probes)
                    if refine:
                        query = query.refine_factor(refine)
                    rows = query.select(["file_path"]).limit(K).to_arrow()
                    return [int(Path(p).stem) for p in rows.column("file_path").to_pylist()]

                result = timed(search, queries, exact)
                print(line(f"{name} probes {probes} refine {refine or '-'}", result))
    table.drop_index(embedded_indexes.vector_index(table).name)
    store.optimize()  # the store's own choice again


def embedded_results(store: EmbeddedStore, corpus: Corpus, queries: np.ndarray) -> dict[str, dict]:
    index = embedded_indexes.vector_index(store._open())
    print(
        f"\n1. the embedded store ({index.index_type if index else 'no vector index'}), {corpus.rows:,} documents; ms"
    )
    results = {}
    for name, where in filters().items():
        keep = corpus.mask(where)
        exact = truth(corpus, queries, keep)
        result = timed(lambda q, w=where: [row_of(h.document) for h in store.search(q, K, w)], queries, exact)
        results[name] = result
        print(line(f"{name} ({keep.mean():.1%} match)", result))
    return results


def during_ingest(store: EmbeddedStore, corpus: Corpus, queries: np.ndarray) -> dict:
    """Unfiltered queries while a writer upserts batches (as an ingest commits) and then compacts."""
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        other = EmbeddedStore(store.path, store.index)
        while not stop.is_set() and written[0] < 50_000:  # documents written again (files changed): the same
            start = written[0] % corpus.rows  # commits and compaction as new ones, and the same right answers
            other.upsert(corpus.documents(start, min(corpus.rows, start + 1_000)))
            written[0] += 1_000
            time.sleep(0.5)
        other.optimize()

    thread = threading.Thread(target=writer)
    thread.start()
    exact = truth(corpus, queries, np.ones(corpus.rows, dtype=bool))
    result = timed(lambda q: [row_of(h.document) for h in store.search(q, K)], queries, exact)
    stop.set()
    thread.join()
    print(line(f"none, during an ingest ({written[0]:,} written)", result))
    after = timed(lambda q: [row_of(h.document) for h in store.search(q, K)], queries, exact)
    print(line("none, after it (optimized)", after))
    return result


# -- 2. faiss -------------------------------------------------------------------------------------------------------


def faiss_results(corpus: Corpus, queries: np.ndarray, target: float) -> dict[str, dict]:
    import faiss

    print(f"\n2. faiss {faiss.__version__} (in RAM, {faiss.omp_get_max_threads()} threads); ms")
    results: dict[str, dict] = {}
    exact = truth(corpus, queries, np.ones(corpus.rows, dtype=bool))
    where = filters()["one year (2019)"]
    keep = corpus.mask(where)
    exact_filtered = truth(corpus, queries, keep)
    bits = np.packbits(keep, bitorder="little")  # referenced until the end: the selector reads it in place
    selector = faiss.IDSelectorBitmap(corpus.rows, faiss.swig_ptr(bits))

    began = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(corpus.vectors)
    print(f"   HNSW32 built in {time.perf_counter() - began:.0f}s")
    for ef in (16, 32, 64, 128, 256, 512):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        result = timed(lambda q, p=params: hnsw.search(q[None], K, params=p)[1][0].tolist(), queries, exact)
        print(line(f"HNSW32 efSearch {ef}", result))
        if result["recall"] >= target or ef == 512:
            results["faiss-hnsw"] = result
            filtered = faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
            results["faiss-hnsw filtered"] = timed(
                lambda q, p=filtered: [r for r in hnsw.search(q[None], K, params=p)[1][0].tolist() if r >= 0],
                queries,
                exact_filtered,
            )
            print(line(f"HNSW32 efSearch {ef}, one year", results["faiss-hnsw filtered"]))
            break
    hnsw.reset()  # its memory back before the IVF index is built

    lists = int(corpus.rows**0.5)
    began = time.perf_counter()
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, lists, faiss.METRIC_INNER_PRODUCT)
    sample = corpus.vectors[np.random.default_rng(5).choice(corpus.rows, min(corpus.rows, 100 * lists), replace=False)]
    ivf.train(sample)
    ivf.add(corpus.vectors)
    print(f"   IVF{lists},Flat built in {time.perf_counter() - began:.0f}s")
    for probes in (5, 10, 20, 40):
        params = faiss.SearchParametersIVF(nprobe=probes)
        result = timed(lambda q, p=params: ivf.search(q[None], K, params=p)[1][0].tolist(), queries, exact)
        print(line(f"IVF{lists},Flat nprobe {probes}", result))
        if result["recall"] >= target or probes == 40:
            results["faiss-ivf"] = result
            filtered = faiss.SearchParametersIVF(nprobe=probes, sel=selector)
            results["faiss-ivf filtered"] = timed(
                lambda q, p=filtered: [r for r in ivf.search(q[None], K, params=p)[1][0].tolist() if r >= 0],
                queries,
                exact_filtered,
            )
            print(line(f"IVF{lists},Flat nprobe {probes}, one year", results["faiss-ivf filtered"]))
            break
    return results


# -- 3. OpenSearch ------------------------------------------------------------------------------------------------


def opensearch_results(corpus: Corpus, queries: np.ndarray, rows: int, identity: IndexIdentity) -> dict[str, dict]:
    from imgvec.stores.opensearch import OpenSearchStore
    from imgvec.stores.opensearch_client import OpenSearchConnection, connect
    from imgvec.stores.opensearch_mapping import KnnIndexSettings

    run_dir, url = None, os.environ.get("OPENSEARCH_URL")
    if not url:
        run_dir = tempfile.mkdtemp(prefix="imgvec-search-bench-")
        started = subprocess.run(
            ["bash", str(ROOT / "scripts" / "opensearch.sh"), "start", "--run-dir", run_dir],
            capture_output=True,
            text=True,
            env={**os.environ, "IMGVEC_OPENSEARCH_HEAP": os.environ.get("IMGVEC_OPENSEARCH_HEAP", "2g")},
        )
        if started.returncode != 0:
            raise SystemExit(started.stderr.strip())
        url = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    results: dict[str, dict] = {}
    try:
        client = connect(OpenSearchConnection(url=url))
        store = OpenSearchStore(client, f"bench-search-{os.getpid()}")
        store.ensure_index(identity, config=KnnIndexSettings(engine="lucene", shards=1, replicas=0))
        began = time.perf_counter()
        for start in range(0, rows, 2_000):
            assert not store.upsert(corpus.documents(start, min(rows, start + 2_000)))
        store.optimize()
        segments = len(client.cat.segments(index=store.index, format="json"))
        print(
            f"\n3. OpenSearch {client.info()['version']['number']} (lucene HNSW), {rows:,} documents loaded and "
            f"refreshed in {time.perf_counter() - began:.0f}s ({segments} segments); ms"
        )
        sub = Corpus.__new__(Corpus)
        sub.__dict__.update(
            {
                k: v[:rows] if isinstance(v, np.ndarray) and len(v) == corpus.rows else v
                for k, v in corpus.__dict__.items()
            }
        )
        sub.rows = rows
        for name in ("none", "one extension (heic)", "one year (2019)", "extension and year"):
            where = filters()[name]
            keep = sub.mask(where)
            exact = truth(sub, queries, keep)
            results[name] = timed(
                lambda q, w=where: [row_of(h.document) for h in store.search(q, K, w)], queries, exact
            )
            print(line(f"{name} ({keep.mean():.1%} match)", results[name]))
        client.indices.delete(index=store.index)
    finally:
        if run_dir:
            subprocess.run(["bash", str(ROOT / "scripts" / "opensearch.sh"), "stop", "--run-dir", run_dir], check=False)
    return results


# -- 4. a text query through the API -------------------------------------------------------------------------------


def text_api(folder: Path, queries: int = 50) -> dict:
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGVEC_")}
    env |= {"IMGVEC_STORE": str(folder / "store"), "IMGVEC_INDEX": "photos", "IMGVEC_MODEL": MODEL}
    process = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        words = ["a dog on a beach", "red car in the snow", "birthday cake", "mountain lake at dawn", "old church"]
        latencies = []
        with httpx.Client(base_url=url, timeout=300) as http:
            for n in range(queries + 5):
                began = time.perf_counter()
                answer = http.get("/api/search", params={"q": f"{words[n % 5]} {n}", "k": K})
                if answer.status_code != 200:
                    raise SystemExit(f"/api/search: {answer.status_code} {answer.text[:200]}")
                if n >= 5:  # the first loads the model and warms the caches
                    latencies.append(time.perf_counter() - began)
        ms = np.asarray(latencies) * 1e3
        return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- the run -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="keep (and reuse) the built store here")
    parser.add_argument("--skip", default="", help="comma-separated: faiss, opensearch, text, ingest")
    parser.add_argument("--opensearch-rows", type=int, default=100_000)
    parser.add_argument("--text-rows", type=int, default=100_000)
    parser.add_argument("--sweep", action="store_true", help="measure each IVF variant and probe count first")
    parser.add_argument("--spread", type=float, default=SPREAD, help="noise around each centre, per dimension")
    args = parser.parse_args()
    globals()["SPREAD"] = args.spread
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((row.split(":", 1)[1].strip() for row in cpuinfo if row.startswith("model name")), platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    identity = wiring.load_embedder(Settings(model=MODEL), MODEL).identity
    work = args.dir or Path(tempfile.mkdtemp(prefix="imgvec-search-bench-"))
    try:
        began = time.perf_counter()
        corpus = Corpus(args.rows)
        queries = corpus.queries(args.queries)
        print(f"corpus: {args.rows:,} x {DIM} drawn in {time.perf_counter() - began:.0f}s; {args.queries} queries")
        suffix = "" if args.spread == 0.6 else f"-spread{args.spread}"
        store = build_store(corpus, work / f"rows-{args.rows}{suffix}", identity)
        if args.sweep:
            sweep(store, corpus, queries)
        embedded = embedded_results(store, corpus, queries)
        target = embedded["none"]["recall"]
        others = {} if "faiss" in skip else faiss_results(corpus, queries, target)
        if "opensearch" not in skip:
            opensearch = opensearch_results(corpus, queries, min(args.opensearch_rows, args.rows), identity)
            others |= {f"opensearch {name}": result for name, result in opensearch.items()}
        text = {}
        if "text" not in skip:
            embedder = wiring.load_embedder(Settings(model=MODEL), MODEL)
            chosen = embedder.prepare_texts()  # what the service will find cached
            known = json.loads((Path.home() / ".cache" / "imgvec" / "text-runtime.json").read_text())
            seconds = next((entry["seconds"] for entry in known.values() if entry["runtime"] == chosen), {})
            print(
                f"\n4. text tower: {chosen} (a lone query: "
                + ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in seconds.items())
                + ")"
            )
            del embedder
            text_store = work / f"rows-{args.text_rows}{suffix}"
            if args.text_rows != args.rows:
                build_store(Corpus(args.text_rows), text_store, identity)
            text[args.text_rows] = text_api(text_store)
            text[args.rows] = text_api(work / f"rows-{args.rows}{suffix}")
            print(
                "\n4. text query through the API (warm, one client), ViT-B-32 text tower: "
                + ", ".join(f"{rows:,}: p50 {t['p50']:.1f} ms, p99 {t['p99']:.1f} ms" for rows, t in text.items())
            )
        if "ingest" not in skip:  # last: it rewrites documents, and the store is no longer the corpus as built
            embedded["during ingest"] = during_ingest(store, corpus, queries)
            (work / f"rows-{args.rows}{suffix}" / "corpus.json").unlink()
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    none = embedded["none"]
    filtered = [embedded[name] for name in ("one extension (heic)", "one year (2019)", "extension and year")]
    worst = max(filtered, key=lambda r: r["p50"])
    faiss_part = others.get("faiss-hnsw", {"p50": float("nan"), "recall": float("nan")})
    text_part = text.get(args.rows, {"p50": float("nan")})["p50"]
    print(
        f"\nsearch {args.rows // 1_000_000 if args.rows >= 1_000_000 else args.rows / 1e6:g}M: "
        f"p50 {none['p50']:.1f} ms, p99 {none['p99']:.1f} ms, recall {none['recall']:.3f}; "
        f"filtered p50 {worst['p50']:.1f} ms, recall {min(r['recall'] for r in filtered):.3f}; "
        f"faiss-hnsw p50 {faiss_part['p50']:.1f} ms, recall {faiss_part['recall']:.3f}; text-api p50 {text_part:.1f} ms"
    )


if __name__ == "__main__":
    main()

"""imgvec on OpenSearch against baselines, one run, as ratios (absolute times depend on the machine).

1. Bulk writes: imgvec's writer (``OpenSearchStore.upsert``, the pipeline's batch size and one large call) vs
   opensearch-py's ``helpers.bulk`` on the same documents (same sources, same chunk size), documents/s.
2. k-NN queries at N vectors (default 100k, clustered 512-dim): p50/p99 latency on the node (lucene HNSW) vs the
   embedded store on the same vectors (its IVF index), and recall@10 of each against exact search.
3. ``ingest --missing`` (the file-index worker's documents, filled in place) vs ``ingest`` of the same folder into
   the embedded store: images/s through the real CLI, tiny random CLIP (the model is not what is compared).

The node is OPENSEARCH_URL, else one that scripts/opensearch.sh starts (and stops) for the run. Use a larger heap for
100k vectors: IMGVEC_OPENSEARCH_HEAP=2g.

    .venv/bin/python benchmarks/opensearch.py [--vectors 100000] [--documents 5000] [--images 300] [--only bulk]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from imgvec.documents import ImageDocument, SourceItem
from imgvec.identity import IndexIdentity
from imgvec.stores.embedded import EmbeddedStore
from imgvec.stores.opensearch import OpenSearchStore
from imgvec.stores.opensearch_client import OpenSearchConnection, connect
from imgvec.stores.opensearch_mapping import KnnIndexSettings

ROOT = Path(__file__).resolve().parent.parent
DIM = 512
IDENTITY = IndexIdentity("bench/random", "bench", "random", DIM)
LUCENE = KnnIndexSettings(engine="lucene", shards=1, replicas=0)
ROUNDS = 3
TINY = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def unit(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def documents(vectors: np.ndarray, offset: int = 0) -> list[ImageDocument]:
    return [
        ImageDocument(SourceItem.of_path(f"/nas/{(offset + i) // 1000}/{offset + i}.jpg", 1, 0.0), v, f"h{offset + i}")
        for i, v in enumerate(vectors)
    ]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bulk_writes(client, prefix: str, count: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    """A warm-up round first (a cold JVM made whichever writer ran first look ~30 % slower), then the writers in
    turn for ROUNDS rounds; the median rate of each."""
    from opensearchpy import helpers

    docs = documents(unit(rng, count, centres))

    def imgvec_one_call(store: OpenSearchStore) -> None:
        assert not store.upsert(docs)

    def imgvec_batches(store: OpenSearchStore) -> None:
        for start in range(0, count, 32):
            assert not store.upsert(docs[start : start + 32])

    def opensearch_py(store: OpenSearchStore) -> None:
        actions = (
            {"_op_type": "update", "_index": store.index, "_id": doc.id, "doc": store._source(doc, IDENTITY)}
            | {"doc_as_upsert": True}
            for doc in docs
        )
        ok, errors = helpers.bulk(client, actions, chunk_size=500, max_chunk_bytes=8 * 2**20)
        assert ok == count and not errors

    writers = {
        "imgvec, one call": imgvec_one_call,
        "imgvec, batches of 32": imgvec_batches,
        "helpers.bulk": opensearch_py,
    }
    rates: dict[str, list[float]] = {name: [] for name in writers}
    for round_ in range(ROUNDS + 1):
        for name, write in writers.items():
            store = OpenSearchStore(client, f"{prefix}-bulk-{round_}-{len(rates[name])}-{abs(hash(name))}")
            store.ensure_index(IDENTITY, config=LUCENE)
            began = time.perf_counter()
            write(store)
            if round_:  # round 0 warms the JVM up
                rates[name].append(count / (time.perf_counter() - began))
            client.indices.delete(index=store.index)
    base = float(np.median(rates["helpers.bulk"]))
    print(f"\n1. bulk writes, {count:,} documents x {DIM} dims, median of {ROUNDS} rounds after a warm-up")
    print("   (documents/s; ratio to opensearch-py's helpers.bulk with the same update actions)")
    for name, measured in rates.items():
        rate = float(np.median(measured))
        print(f"   {name:<24} {rate:>8,.0f}/s   x{rate / base:.2f}")


def knn_queries(client, prefix: str, count: int, rng: np.random.Generator, centres: np.ndarray, work: Path) -> None:
    vectors = unit(rng, count, centres)
    queries = unit(rng, 200, centres)
    truth = [set(np.argpartition(-(vectors @ q), 10)[:10].tolist()) for q in queries]
    node = OpenSearchStore(client, f"{prefix}-knn")
    node.ensure_index(IDENTITY, config=LUCENE)
    embedded = EmbeddedStore(work / "embedded", "knn")
    embedded.ensure_index(IDENTITY)
    for start in range(0, count, 2000):
        batch = documents(vectors[start : start + 2000], start)
        assert not node.upsert(batch)
        embedded.upsert(batch)
    began = time.perf_counter()
    node.optimize()
    client.indices.forcemerge(index=node.index, max_num_segments=1, request_timeout=3600)
    node_build = time.perf_counter() - began
    began = time.perf_counter()
    embedded.optimize()
    embedded_build = time.perf_counter() - began
    print(f"\n2. k-NN top-10 at {count:,} vectors, 200 queries (ms; recall@10 against exact search)")
    print(
        f"   index build after loading: node (refresh + force-merge) {node_build:.0f}s, embedded {embedded_build:.0f}s"
    )
    results = {}
    for name, store in (("node (lucene HNSW)", node), ("embedded (LanceDB)", embedded)):
        for q in queries[:10]:  # warm caches
            store.search(q, 10)
        latencies, recall = [], []
        for q, exact in zip(queries, truth, strict=True):
            began = time.perf_counter()
            hits = store.search(q, 10)
            latencies.append(time.perf_counter() - began)
            found = {int(h.document["file_path"].rsplit("/", 1)[1].split(".")[0]) for h in hits}
            recall.append(len(found & exact) / 10)
        results[name] = percentiles(latencies)
        print(f"   {name:<20} p50 {results[name][0]:7.1f}  p99 {results[name][1]:7.1f}  recall {np.mean(recall):.3f}")
    node_p, emb_p = results["node (lucene HNSW)"], results["embedded (LanceDB)"]
    print(f"   node / embedded: p50 x{node_p[0] / emb_p[0]:.2f}, p99 x{node_p[1] / emb_p[1]:.2f}")
    client.indices.delete(index=node.index)


def fill_vs_ingest(url: str, prefix: str, images: int, work: Path) -> None:
    from PIL import Image

    folder = work / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((640, 480)).save(folder / f"{i}.jpg")
    (work / "configs").mkdir()
    (work / "configs" / "imgvec-tiny.json").write_text(json.dumps(TINY))
    env = {
        **os.environ,
        "IMGVEC_MODEL": "imgvec-tiny/random",
        "IMGVEC_MODEL_CONFIG_DIR": str(work / "configs"),
        "IMGVEC_CACHE_DIR": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    cli = [sys.executable, "-m", "imgvec.cli"]
    client = connect(OpenSearchConnection(url=url))
    index = f"{prefix}-worker"
    run = subprocess.run(
        [*cli, "--store", url, "index", "create", index, "--engine", "lucene", "--shards", "1", "--replicas", "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    for i in range(images):  # the worker's documents: its own ids, no vector
        path = folder / f"{i}.jpg"
        body = {"file_name": path.name, "file_path": str(path), "file_extension": "jpg", "file_size": 1}
        client.index(index=index, id=f"worker-{i}", body=body)
    client.indices.refresh(index=index)
    rates = {}
    for name, args in (
        ("ingest --missing (node)", ["--store", url, "--index", index, "ingest", "--missing", "--json"]),
        ("ingest (embedded)", ["--store", str(work / "store"), "ingest", str(folder), "--json"]),
    ):
        began = time.perf_counter()
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        rates[name] = (report["embedded"] + report["cache_hits"]) / report["seconds"]
        print(f"   {name:<26} {rates[name]:6.1f} images/s in the run ({seconds:.1f}s with start-up)")
    ratio = rates["ingest --missing (node)"] / rates["ingest (embedded)"]
    print(f"   --missing on the node / ingest into the embedded store: x{ratio:.2f}")
    client.indices.delete(index=index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--documents", type=int, default=5_000)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--only", choices=["bulk", "knn", "fill"], help="run one part")
    args = parser.parse_args()

    run_dir = None
    url = os.environ.get("OPENSEARCH_URL")
    if not url:
        run_dir = tempfile.mkdtemp(prefix="imgvec-opensearch-bench-")
        started = subprocess.run(
            ["bash", str(ROOT / "scripts" / "opensearch.sh"), "start", "--run-dir", run_dir],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            raise SystemExit(started.stderr.strip())
        url = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        client = connect(OpenSearchConnection(url=url))
        info = client.info()["version"]["number"]
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
        print(f"OpenSearch {info} at {url}; {cpu}, {os.cpu_count()} cores")
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((2000, DIM), dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="imgvec-bench-") as work:
            if args.only in (None, "bulk"):
                bulk_writes(client, prefix, args.documents, rng, centres)
            if args.only in (None, "knn"):
                knn_queries(client, prefix, args.vectors, rng, centres, Path(work))
            if args.only in (None, "fill"):
                print(f"\n3. filling vectors, {args.images} images (640x480 JPEG), tiny random CLIP")
                fill_vs_ingest(url, prefix, args.images, Path(work))
    finally:
        if run_dir:
            subprocess.run(["bash", str(ROOT / "scripts" / "opensearch.sh"), "stop", "--run-dir", run_dir], check=False)


if __name__ == "__main__":
    main()

"""`imgvec serve` under load: query latency and throughput over HTTP vs the same search in-process, and the
embedding endpoint's dynamic batching vs one client and vs the batched ingest pipeline. One run, ratios.

    python benchmarks/serve.py [--rows 100000] [--queries 48] [--model ViT-B-32/random]

The index holds --rows clustered random unit vectors under the model's identity (a search's cost does not depend
on what the vectors mean); queries are real: text through the text tower, JPEG uploads through the guarded decode
and the image tower, all in a real `imgvec serve` process on 127.0.0.1, reached over TCP.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from imgvec import wiring
from imgvec.documents import ImageDocument, SourceItem
from imgvec.search import image_pixels, search_text
from imgvec.settings import Settings
from imgvec.sources.local import LocalFolder
from imgvec.stores.embedded import EmbeddedStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import encode, photo

DIM = 512
WORDS = [
    "red",
    "blue",
    "old",
    "small",
    "sunny",
    "snowy",
    "busy",
    "quiet",
    "car",
    "dog",
    "beach",
    "street",
    "house",
    "mountain",
    "boat",
    "city",
    "child",
    "tree",
]


def build_index(store_dir: Path, identity, rows: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM), dtype=np.float32)
    store = EmbeddedStore(store_dir, "images")
    store.ensure_index(identity)
    for start in range(0, rows, 10_000):
        n = min(10_000, rows - start)
        x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.upsert(
            [
                ImageDocument(SourceItem.of_path(f"/nas/{i // 1000}/{i}.jpg", 1, 0.0), x[i - start])
                for i in range(start, start + n)
            ]
        )
    store.optimize()


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 4)) for _ in range(n)]


def load(url: str, requests: list[tuple[str, dict]], clients: int) -> tuple[list[float], float]:
    """Send ``requests`` (path, httpx kwargs) from ``clients`` threads; (latencies, wall seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()
    queue = list(requests)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    path, kwargs = queue.pop()
                began = time.perf_counter()
                answer = http.request("POST" if "files" in kwargs or "content" in kwargs else "GET", path, **kwargs)
                elapsed = time.perf_counter() - began
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: {answer.status_code} {answer.text[:200]}")
                with lock:
                    latencies.append(elapsed)

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - began


def ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1e3)


def start_service(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("imgvec serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=48, help="queries per (kind, concurrency)")
    parser.add_argument("--embeds", type=int, default=64, help="distinct images for /api/embed and the pipeline")
    parser.add_argument("--model", default="ViT-B-32/random")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores; flags: "
        + " ".join(f for f in wanted if f" {f}" in flags)
    )
    work = Path(tempfile.mkdtemp(prefix="imgvec-bench-serve-"))
    try:
        settings = Settings(store=str(work / "store"), model=args.model, threads=cores)
        began = time.perf_counter()
        build_index(work / "store", wiring.load_embedder(settings, args.model).identity, args.rows)
        print(f"index: {args.rows:,} x {DIM} vectors built in {time.perf_counter() - began:.0f}s; model {args.model}")

        photos = work / "photos"
        photos.mkdir()
        for i in range(args.embeds):
            (photos / f"{i}.jpg").write_bytes(encode(photo(i, (1280, 960)), quality=90))
        images = [p.read_bytes() for p in sorted(photos.iterdir())]

        # -- over HTTP ------------------------------------------------------------------------------
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGVEC_")}
        env |= {"IMGVEC_STORE": str(work / "store"), "IMGVEC_MODEL": args.model, "IMGVEC_THREADS": str(cores)}
        process, url = start_service(env)
        try:
            load(url, [(f"/api/search?q=warm+up+{i}", {}) for i in range(4)], 1)
            rows = []
            results: dict[tuple[str, int], tuple[list[float], float]] = {}
            for kind in ("text", "image"):
                for clients in (1, 8):
                    if kind == "text":
                        requests = [
                            ("/api/search", {"params": {"q": t, "k": 10}}) for t in texts(args.queries, clients)
                        ]
                    else:
                        requests = [
                            ("/api/search?k=10", {"files": {"image": ("q.jpg", images[i % len(images)], "image/jpeg")}})
                            for i in range(args.queries)
                        ]
                    latencies, wall = load(url, requests, clients)
                    results[(kind, clients)] = (latencies, wall)
                    rows.append((kind, clients, ms(latencies, 50), ms(latencies, 99), len(latencies) / wall))
            embed_requests = [("/api/embed?useCache=false", {"content": data}) for data in images]
            one, one_wall = load(url, embed_requests, 1)
            many, many_wall = load(url, embed_requests, 16)
        finally:
            process.terminate()
            process.wait(timeout=30)

        # -- in process: the same store, model and search functions, no HTTP ----------------------------
        embedder = wiring.load_embedder(settings, args.model)
        store = wiring.open_store(settings)
        for text in texts(4, 99):  # warm-up: model and index caches
            search_text(store, embedder, text)
        local_text: list[float] = []
        for text in texts(args.queries, 1):
            t = time.perf_counter()
            search_text(store, embedder, text, 10)
            local_text.append(time.perf_counter() - t)
        local_image: list[float] = []
        for data in images[: args.queries]:
            t = time.perf_counter()
            store.search(embedder.embed_images(image_pixels(embedder, data)[None])[0], 10)
            local_image.append(time.perf_counter() - t)
        del embedder, store

        # -- the batched ingest pipeline on the same images -----------------------------------------
        pipeline_settings, options = wiring.pipeline_options(
            replace(settings, store=str(work / "ingest")), {}, remote=False
        )
        ingest_embedder = wiring.load_embedder(pipeline_settings, args.model)
        source = LocalFolder(photos)
        pipeline_store = EmbeddedStore(work / "ingest", "images")
        from imgvec.pipeline.indexer import Indexer

        run = Indexer(source, pipeline_store, ingest_embedder, options, label=str(photos))
        began = time.perf_counter()
        report = run.run()
        pipeline_rate = report.embedded / (time.perf_counter() - began)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'query':<6} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'queries/s':>10}")
    for kind, clients, p50, p99, qps in rows:
        print(f"{kind:<6} {clients:>7} {p50:>8.1f} {p99:>8.1f} {qps:>10.1f}")
    print(
        f"in-process (no HTTP, 1 client): text p50 {ms(local_text, 50):.1f} ms, image p50 {ms(local_image, 50):.1f} ms"
    )
    text_overhead = ms(results[("text", 1)][0], 50) / ms(local_text, 50)
    image_overhead = ms(results[("image", 1)][0], 50) / ms(local_image, 50)
    print(f"HTTP overhead (API p50 / in-process p50, 1 client): text {text_overhead:.2f}x, image {image_overhead:.2f}x")
    one_rate, many_rate = len(one) / one_wall, len(many) / many_wall
    print(
        f"/api/embed ({args.embeds} x 1280x960 JPEG): 1 client {one_rate:.1f} images/s, "
        f"16 clients {many_rate:.1f} images/s "
        f"({many_rate / one_rate:.2f}x); batched ingest pipeline {pipeline_rate:.1f} images/s "
        f"(16 clients / pipeline {many_rate / pipeline_rate:.2f})"
    )


if __name__ == "__main__":
    main()

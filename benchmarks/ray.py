"""`--executor ray` vs the in-process pipeline on the same images, and the driver's memory at 10k and 100k items.

    python benchmarks/ray.py [--images 384] [--rss-items 100000]

1. Overhead: 1080p photo-like JPEGs, ViT-B-32 with random weights (full-size compute), the auto runtime. The
   in-process pipeline (decode workers split as the CLI splits them) and the Ray executor with 2 workers (a Ray
   started on this machine, one CPU per worker) each index a warm-up folder, then the measured one, in one session;
   the ratio of their steady rates is the overhead (the issue's target: >= 0.85). Also: bytes sent and received
   between driver and workers per image.
2. Driver memory: a child process drives the Ray executor over N virtual items (a small JPEG made for each as it
   is read, the tiny model: how memory scales with the number of items does not depend on the model) and reports
   its own RSS at 1k and 10k items done and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named ray.py: as a script its folder comes first on sys.path and would shadow the ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from imgvec import wiring  # noqa: E402
from imgvec.allocator import arrow_on_system_allocator, limit_heap_growth  # noqa: E402
from imgvec.documents import SourceItem  # noqa: E402
from imgvec.embed.cpu import cpu_info  # noqa: E402
from imgvec.pipeline.executors.local import LocalExecutor  # noqa: E402
from imgvec.pipeline.executors.ray import RayExecutor  # noqa: E402
from imgvec.pipeline.indexer import Indexer  # noqa: E402
from imgvec.pipeline.options import PipelineOptions  # noqa: E402
from imgvec.settings import Settings  # noqa: E402
from imgvec.sources.local import LocalFolder  # noqa: E402
from imgvec.stores.embedded import EmbeddedStore  # noqa: E402
from tests.helpers import encode, textured_photo  # noqa: E402

MODEL = "ViT-B-32/random"
TINY = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
WARM_UP = 96


def make_folder(root: Path, count: int) -> Path:
    bases = [encode(textured_photo(seed, (1920, 1080)), quality=90) for seed in range(8)]
    for name, total in (("warm", WARM_UP), ("main", count)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(total):
            # A comment segment makes each file's bytes (and hash) its own; the decode work is the same.
            text = f"{name}-{i}".encode()
            jpeg = bases[i % len(bases)]
            jpeg = jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]
            (folder / f"{i:05d}.jpg").write_bytes(jpeg)
    return root


class Captured:
    """The session's executor, kept for its status (workers ready, bytes per image)."""

    def __init__(self, settings: Settings, model: str) -> None:
        self.settings, self.model, self.executor = settings, model, None

    def __call__(self, source, embedder, options) -> RayExecutor:
        self.executor = RayExecutor(source, embedder, options, model=wiring.model_config(self.settings, self.model))
        return self.executor


def steady_rate(run: Indexer, folder: Path, captured: Captured | None) -> float:
    source = LocalFolder(folder)
    with run.session():
        run.process(source.scan(lambda _: None, under=folder / "warm"))
        if captured is not None:  # every worker loaded and working before the clock starts
            deadline = time.monotonic() + 300
            while captured.executor.status().workers_alive < run.options.ray_workers:
                assert time.monotonic() < deadline, "Ray workers did not start"
                time.sleep(0.2)
        began, before = time.perf_counter(), run.report.embedded
        run.process(source.scan(lambda _: None, under=folder / "main"))
        rate = (run.report.embedded - before) / (time.perf_counter() - began)
    if run.report.failures:
        raise SystemExit(f"unexpected failures: {run.report.failures[:3]}")
    return rate


def overhead(work: Path, images: int, workers: int) -> dict:
    settings = Settings(store=str(work / "store"), cache_dir=work / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        embedder = wiring.load_embedder(settings, MODEL)
    folder = make_folder(work / "photos", images)
    local_options = wiring.fit_to_model(PipelineOptions(workers_tuned=True), embedder)
    local = Indexer(LocalFolder(folder), EmbeddedStore(work / "local", "images"), embedder, local_options)
    local_rate = steady_rate(local, folder, None)
    captured = Captured(settings, MODEL)
    ray_options = PipelineOptions(executor="ray", ray_workers=workers)
    remote = Indexer(
        LocalFolder(folder), EmbeddedStore(work / "ray", "images"), embedder, ray_options, executor=captured
    )
    ray_rate = steady_rate(remote, folder, captured)
    status = captured.executor.status()
    return {
        "runtime": embedder.runtime.describe(),
        "local_workers": local_options.workers,
        "local_rate": local_rate,
        "ray_rate": ray_rate,
        "ray_runtime": status.runtime,
        "ratio": ray_rate / local_rate,
        "bytes_per_image": status.bytes_per_image,
        "per_worker": [(w["node"], w["images"], w["rate"]) for w in status.workers or []],
    }


class SmallImages:
    """N items with their own paths, each a small JPEG made when it is read: a collection of any size without the
    disk (distinct pictures: the store's vector index needs distinct vectors to train on)."""

    def __init__(self, count: int) -> None:
        self.count = count

    @property
    def location(self) -> str:
        return "/virtual"

    @property
    def scope(self) -> str:
        return "/virtual/"

    def scan(self, on_error) -> Iterator[SourceItem]:
        for i in range(self.count):
            yield SourceItem.of_path(f"/virtual/{i // 1000:04d}/{i:07d}.jpg", 1000, 1.0)

    def read(self, item: SourceItem) -> bytes:
        import numpy as np
        from PIL import Image

        pixels = np.random.default_rng(int(item.file_name[:7])).integers(0, 256, (12, 16, 3), dtype=np.uint8)
        return encode(Image.fromarray(pixels).resize((64, 48)))


def driver_rss(items: int, executor: str = "ray") -> dict:
    """Runs in its own process: the driver over ``items`` items, its RSS as they are done and at the end.
    ``executor`` local: the same run in-process (decode workers are other processes), for the store's share."""
    limit_heap_growth()  # as `imgvec ingest` does at start (docs/architecture.md, "Memory and long runs")
    arrow_on_system_allocator()
    work = Path(tempfile.mkdtemp(prefix="imgvec-ray-rss-"))
    try:
        (work / "configs").mkdir()
        (work / "configs" / "imgvec-tiny.json").write_text(json.dumps(TINY))
        settings = Settings(store=str(work / "store"), cache_dir=work / "cache", model_config_dir=str(work / "configs"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedder = wiring.load_embedder(settings, "imgvec-tiny/random")
        source = SmallImages(items)
        options = PipelineOptions(executor=executor, batch_size=256, workers=1, io_concurrency=0)
        seen: dict[int, float] = {}
        me = psutil.Process()

        def sample(progress) -> None:
            for mark in (1_000, 10_000, items // 2, items * 95 // 100):
                if progress.succeeded >= mark and mark not in seen:
                    seen[mark] = me.memory_info().rss / 2**20

        factory = Captured(settings, "imgvec-tiny/random") if executor == "ray" else LocalExecutor
        run = Indexer(
            source, EmbeddedStore(work / "store", "images"), embedder, options, executor=factory, on_progress=sample
        )
        began = time.perf_counter()
        report = run.run()
        seen["end"] = me.memory_info().rss / 2**20  # after the final compaction and vector-index build
        return {
            "items": items,
            "seconds": time.perf_counter() - began,
            "embedded": report.embedded,
            "rss_mib": {str(k): round(v, 1) for k, v in seen.items()},
            "bytes_per_image": run.progress.bytes_per_image,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--rss-items", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (actors) for the overhead run")
    parser.add_argument("--driver-rss", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--driver-executor", default="ray", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver_rss:
        print(json.dumps(driver_rss(args.driver_rss, args.driver_executor)))
        return
    cpu = cpu_info()
    print(f"CPU: {cpu.model}, {os.cpu_count()} cores; flags: {' '.join(sorted(cpu.flags))}")
    with tempfile.TemporaryDirectory(prefix="imgvec-ray-bench-") as scratch:
        result = overhead(Path(scratch), args.images, args.workers)
    print(f"model {MODEL}, 1080p JPEGs, {args.images} measured after {WARM_UP} warm-up")
    workers = result["local_workers"]
    print(f"in-process: {result['local_rate']:.2f} images/s ({result['runtime']}, {workers} decode workers)")
    print(f"ray, {args.workers} workers: {result['ray_rate']:.2f} images/s ({result['ray_runtime']})")
    for node, done, rate in result["per_worker"]:
        print(f"  worker on {node}: {done} images, {rate:.2f} images/s")
    print(f"bytes between driver and workers per image: {result['bytes_per_image']}")
    growth = {}
    for executor in ("ray", "local"):
        child = subprocess.run(
            [sys.executable, __file__, "--driver-rss", str(args.rss_items), "--driver-executor", executor],
            capture_output=True,
            text=True,
            check=True,
        )
        rss = json.loads(child.stdout.strip().splitlines()[-1])
        marks = rss["rss_mib"]
        print(
            f"{executor} driver RSS (MiB) over {rss['items']} items ({rss['seconds']:.0f}s, tiny model), by items "
            "done: " + ", ".join(f"{k}: {v}" for k, v in marks.items())
        )
        small, large = marks.get("10000"), marks.get(str(rss["items"] * 95 // 100))
        growth[executor] = f"{large - small:+.0f} MiB" if small and large else "n/a"
    print(
        f"ray overhead ratio (ray / in-process, steady): {result['ratio']:.2f}; driver RSS 10k→95%: "
        f"{growth['ray']} (in-process: {growth['local']})"
    )


if __name__ == "__main__":
    main()

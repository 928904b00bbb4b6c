"""Peak memory of `imgvec ingest` at 10k and 100k files: it must stay flat, because the crawl streams.

    python benchmarks/memory.py [--sizes 10000 100000]

For each size: N distinct small JPEGs are written to a temp folder, then the real CLI ingests them in a
subprocess (tiny CLIP architecture with random weights: model size does not change how memory scales with the
number of files) while psutil samples the RSS of the whole process tree (main + decode workers) every 0.1 s.
Baseline, in the same run: a process that lists the folder into memory first (what a non-streaming crawl holds).
The figures to quote are the ratios 100k/10k, and the main process's RSS at 50% and 95% of the run's time: the
crawl's steady state, apart from the end-of-run compaction and vector-index build that the peak includes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

TINY = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
LIST_EVERYTHING = (
    "import sys, psutil; from imgvec.sources import LocalFolder; "
    "items = list(LocalFolder(sys.argv[1]).scan(lambda e: None)); "
    "print(len(items), psutil.Process().memory_info().rss)"
)


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((64, 48)).save(folder / f"{i:07d}.jpg", quality=80)


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    try:
        main = process.memory_info().rss
        children = sum(c.memory_info().rss for c in process.children(recursive=True))
    except psutil.Error:
        return 0, 0
    return main, main + children


def measure_ingest(folder: Path, env: dict[str, str]) -> dict:
    args = [sys.executable, "-m", "imgvec.cli", "--model", "imgvec-tiny/random", "ingest", str(folder), "--json"]
    began = time.perf_counter()
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    handle = psutil.Process(child.pid)
    peak_main = peak_tree = 0
    samples: list[tuple[float, int]] = []
    while child.poll() is None:
        main, tree = tree_rss(handle)
        peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        samples.append((time.perf_counter() - began, main))
        time.sleep(0.1)
    seconds = time.perf_counter() - began
    report = json.loads(child.stdout.read())

    def at(share: float) -> int:
        """Median main RSS over 2% of the run around this share of its time."""
        window = sorted(rss for t, rss in samples if abs(t / seconds - share) <= 0.01) or [0]
        return window[len(window) // 2]

    return {
        "peak_main": peak_main,
        "peak_tree": peak_tree,
        "mid_main": at(0.50),
        "late_main": at(0.95),
        "seconds": seconds,
        "embedded": report["embedded"],
    }


def measure_list_everything(folder: Path, env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", LIST_EVERYTHING, str(folder)], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    mb = 2**20
    with tempfile.TemporaryDirectory(prefix="imgvec-mem-") as tmp:
        work = Path(tmp)
        (work / "configs").mkdir()
        (work / "configs" / "imgvec-tiny.json").write_text(json.dumps(TINY))
        results = {}
        for n in args.sizes:
            folder = work / f"photos-{n}"
            began = time.perf_counter()
            make_folder(folder, n)
            print(f"{n:,} files written in {time.perf_counter() - began:.0f}s", flush=True)
            env = {
                **os.environ,
                "IMGVEC_STORE": str(work / f"store-{n}"),
                "IMGVEC_CACHE_DIR": str(work / "cache"),
                "IMGVEC_MODEL_CONFIG_DIR": str(work / "configs"),
                "HF_HUB_OFFLINE": "1",
            }
            ours = measure_ingest(folder, env)
            ours["list_everything"] = measure_list_everything(folder, env)
            results[n] = ours
            print(
                f"{n:>9,} files: imgvec ingest peak RSS {ours['peak_main'] / mb:.0f} MiB main, "
                f"{ours['peak_tree'] / mb:.0f} MiB with workers; main at 50%/95% of the run "
                f"{ours['mid_main'] / mb:.0f}/{ours['late_main'] / mb:.0f} MiB; {ours['embedded']:,} embedded in "
                f"{ours['seconds']:.0f}s ({ours['embedded'] / ours['seconds']:.0f} images/s); "
                f"baseline list-everything process {ours['list_everything'] / mb:.0f} MiB",
                flush=True,
            )
        small, large = min(results), max(results)
        if small != large:
            a, b = results[small], results[large]
            print(
                f"ratio {large:,}/{small:,} files: imgvec peak RSS x{b['peak_main'] / a['peak_main']:.2f} (main), "
                f"steady state (95% of the run) x{b['late_main'] / a['late_main']:.2f}, "
                f"x{b['peak_tree'] / a['peak_tree']:.2f} (with workers); "
                f"list-everything baseline x{b['list_everything'] / a['list_everything']:.2f}"
            )


if __name__ == "__main__":
    main()

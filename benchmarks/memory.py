"""Peak memory of `imgvec ingest` at 10k and 100k files: it must stay flat, because the crawl streams.

    python benchmarks/memory.py [--sizes 10000 100000]

For each size: N distinct small JPEGs are written to a temp folder, then the real CLI ingests them in a
subprocess (tiny CLIP architecture with random weights: model size does not change how memory scales with the
number of files) while psutil samples the RSS of the whole process tree (main + decode workers) every 0.1 s.
Baseline, in the same run: a process that lists the folder into memory first (what a non-streaming crawl holds).
RSS is indexed by the files processed (read from the run state, as `imgvec progress` reads it), so runs of
different sizes compare at equal shares of their files. The figures to quote: the main process's RSS at 95% of the
files (the crawl's steady state), its growth per file within the large run, the peak while files remain, and
apart from it the peak after the last file: the final commit, compaction and vector-index build, whose size
follows the number of vectors in the index (an IVF index trains on them), not the crawl.
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

from imgvec.pipeline.journal import RunJournal

TINY = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
INDEX = "images"  # the CLI's default index
SHARES = (0.1, 0.25, 0.5, 0.75, 0.95)
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


def anonymous(pid: int) -> int:
    """Anonymous (heap, stacks, arenas) bytes: RSS less the file-backed pages of torch's and Lance's libraries,
    which the kernel may drop and re-read at will, and which do not depend on the number of files."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ProcessedFiles:
    """Files the run has finished with, read through the run state as `imgvec progress` reads it from a second
    terminal; opened once the ingest has created it."""

    def __init__(self, store: Path) -> None:
        self.path = store / "_imgvec"
        self.state: RunJournal | None = None

    def __call__(self) -> int:
        if self.state is None and (self.path / f"{INDEX}.sqlite").exists():
            self.state = RunJournal.for_index(self.path, INDEX)
        latest = self.state.latest() if self.state else None
        return latest[0].processed if latest else 0


def measure_ingest(folder: Path, n: int, env: dict[str, str]) -> dict:
    """Samples every 0.1 s; RSS is indexed by files processed, so runs of different sizes compare at equal shares."""
    args = [sys.executable, "-m", "imgvec.cli", "--model", "imgvec-tiny/random", "ingest", str(folder), "--json"]
    processed = ProcessedFiles(Path(env["IMGVEC_STORE"]))
    began = time.perf_counter()
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    handle = psutil.Process(child.pid)
    peak_tree = 0
    crawl: list[tuple[int, int, int]] = []  # (files processed, main RSS, main anonymous) up to 99% of the files
    end_peak = 0  # main RSS after the last files: final commit, compaction, index builds
    done = 0
    while child.poll() is None:
        main, tree = tree_rss(handle)
        peak_tree = max(peak_tree, tree)
        # The run state is saved once a second, and the end-of-run optimize can start before it says n: the last
        # 1% of the files counts as the end, so the vector-index build never passes for a crawl peak.
        if done < 0.99 * n:
            done = processed() if len(crawl) % 5 == 0 else done
            crawl.append((done, main, anonymous(child.pid)))
        else:
            end_peak = max(end_peak, main)
        time.sleep(0.1)
    seconds = time.perf_counter() - began
    report = json.loads(child.stdout.read())

    def at(share: float) -> tuple[int, int]:
        """Median main RSS and anonymous bytes over the samples within 2% of the files around this share."""
        window = [(rss, anon) for files, rss, anon in crawl if abs(files / n - share) <= 0.02]
        if not window and crawl:  # a short run: the nearest sample
            _, rss, anon = min(crawl, key=lambda sample: abs(sample[0] / n - share))
            window = [(rss, anon)]
        return sorted(window)[len(window) // 2] if window else (0, 0)

    shares = {share: at(share) for share in SHARES}
    return {
        "peak_crawl": max((rss for _, rss, _ in crawl), default=0),
        "peak_end": end_peak,
        "peak_tree": peak_tree,
        "shares": shares,
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
            ours = measure_ingest(folder, n, env)
            ours["list_everything"] = measure_list_everything(folder, env)
            results[n] = ours
            curve = ", ".join(f"{int(k * 100)}% {v[0] / mb:.0f}" for k, v in ours["shares"].items())
            anon = ", ".join(f"{int(k * 100)}% {v[1] / mb:.0f}" for k, v in ours["shares"].items())
            print(
                f"{n:>9,} files: main RSS by files processed: {curve} MiB (anonymous: {anon} MiB); "
                f"peak while crawling {ours['peak_crawl'] / mb:.0f} MiB, after the last file (final commit, "
                f"compaction, indexes) {ours['peak_end'] / mb:.0f} MiB, whole tree with workers "
                f"{ours['peak_tree'] / mb:.0f} MiB; {ours['embedded']:,} embedded in {ours['seconds']:.0f}s "
                f"({ours['embedded'] / ours['seconds']:.0f} images/s); baseline list-everything process "
                f"{ours['list_everything'] / mb:.0f} MiB",
                flush=True,
            )
        small, large = min(results), max(results)
        if small != large:
            a, b = results[small], results[large]

            def ratio(key: str, index: int = 0) -> float:
                return b["shares"][0.95][index] / a["shares"][0.95][index] if key == "late" else b[key] / a[key]

            print(
                f"ratio {large:,}/{small:,} files: main RSS at 95% of the files x{ratio('late'):.2f} "
                f"(anonymous x{ratio('late', 1):.2f}); peak while crawling x{ratio('peak_crawl'):.2f}; "
                f"peak after the last file x{ratio('peak_end'):.2f}; whole tree x{ratio('peak_tree'):.2f}; "
                f"list-everything baseline x{ratio('list_everything'):.2f}"
            )
            growth = (b["shares"][0.95][0] - b["shares"][0.25][0]) / (0.7 * large)
            print(f"growth within the {large:,} run, 25% → 95% of the files: {growth / 1024:.2f} KiB per file")


if __name__ == "__main__":
    main()

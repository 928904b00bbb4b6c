"""How fast changes reach the index with `imgvec watch`, against the alternative: a full `imgvec ingest` re-run.

One run, same folder, same model, same machine:
  1. a folder of --files small JPEGs is indexed once (set-up, not timed);
  2. `imgvec watch` runs (warm, no initial pass); one new file is written and timed until it is searchable
     (--settle included), then --burst new files, timed until all are indexed;
  3. baseline: --burst more files, then `imgvec ingest FOLDER` (what a cron job would do) is timed end to end;
  4. deletes: --burst files removed; watch vs `imgvec sync` (the full reconcile pass).
Prints the times and the ratios baseline / watch.

    .venv/bin/python benchmarks/watch.py --files 5000 --burst 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgvec.stores.embedded import EmbeddedStore  # noqa: E402
from tests.conftest import TINY_CONFIG  # noqa: E402
from tests.helpers import encode, photo  # noqa: E402


def write(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo(seed, (64, 48))))


def documents(store: Path) -> int:
    table = EmbeddedStore(store, "images")
    return table.stats().documents if table.exists() else 0


def wait_until(condition, timeout: float = 600) -> float:
    began = time.perf_counter()
    while not condition():
        if time.perf_counter() - began > timeout:
            raise SystemExit("timed out")
        time.sleep(0.05)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--model", default="imgvec-tiny/random", help="imgvec-tiny/random or ViT-B-32/random")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgvec-watch-bench-"))
    folder, store, configs = work / "photos", work / "store", work / "configs"
    configs.mkdir()
    (configs / "imgvec-tiny.json").write_text(json.dumps(TINY_CONFIG))
    env = {
        **os.environ,
        "IMGVEC_STORE": str(store),
        "IMGVEC_MODEL": args.model,
        "IMGVEC_MODEL_CONFIG_DIR": str(configs),
        "IMGVEC_CACHE_DIR": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    imgvec = [sys.executable, "-m", "imgvec.cli"]
    try:
        for i in range(args.files):
            write(folder / f"d{i % 50:02d}" / f"p{i:06d}.jpg", i)
        subprocess.run([*imgvec, "ingest", str(folder)], env=env, check=True, capture_output=True)
        print(f"set-up: {args.files} files indexed; model {args.model}; {os.cpu_count()} cores")

        watcher = subprocess.Popen(
            [*imgvec, "watch", str(folder), "--no-initial-sync"], env=env, stderr=subprocess.PIPE, text=True
        )
        assert watcher.stderr is not None
        while "watching" not in watcher.stderr.readline():
            pass
        time.sleep(3)  # the observer and the worker pool are up
        base = documents(store)
        write(folder / "new" / "single.jpg", 10**6)
        single = wait_until(lambda: documents(store) == base + 1)
        for i in range(args.burst):
            write(folder / "burst1" / f"b{i:05d}.jpg", 2 * 10**6 + i)
        burst_watch = wait_until(lambda: documents(store) == base + 1 + args.burst)
        shutil.rmtree(folder / "burst1")
        delete_watch = wait_until(lambda: documents(store) == base + 1)
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=120)

        for i in range(args.burst):
            write(folder / "burst2" / f"b{i:05d}.jpg", 3 * 10**6 + i)
        began = time.perf_counter()
        subprocess.run([*imgvec, "ingest", str(folder)], env=env, check=True, capture_output=True)
        burst_full = time.perf_counter() - began
        shutil.rmtree(folder / "burst2")
        began = time.perf_counter()
        subprocess.run([*imgvec, "sync", str(folder)], env=env, check=True, capture_output=True)
        delete_full = time.perf_counter() - began
        assert documents(store) == base + 1

        print(f"one new file searchable after      {single:6.2f} s with watch (settle 2 s included)")
        print(
            f"{args.burst} new files: watch {burst_watch:6.2f} s | full ingest re-run {burst_full:6.2f} s "
            f"| ratio {burst_full / burst_watch:5.1f}x"
        )
        print(
            f"{args.burst} deleted files: watch {delete_watch:6.2f} s | sync pass {delete_full:6.2f} s "
            f"| ratio {delete_full / delete_watch:5.1f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

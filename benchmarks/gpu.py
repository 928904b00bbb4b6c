"""Where the time goes on a GPU machine: the model's ceiling, each decoder's ceiling, and imgvec end to end.

One prepared run for a short loan of a GPU machine (DEVELOPERS.md; ../shared/GPU_NOTES.md says what it has): it
installs nothing and fits one device call. ViT-B-32/random (the compute of ViT-B/32, no download).
  1. the model's ceiling: torch fp32, fp16 and bf16 autocast, and the fastest of them through torch.compile, at
     batch 256, 512 and 1024, on ready uint8 inputs normalised on the device: what ``--runtime auto`` measures
     (embed/gpu_probe.py), so the end-to-end runs then use its choice from the cache;
  2. each decoder's ceiling on this host, for 12 MP, 1080p and 0.3 MP JPEGs: the CPU's reduced decode and
     preprocessing in one process per core (reading the files themselves), and the GPU lane's batched nvJPEG
     decode with its resize and crop on the device (bytes in memory);
  3. imgvec end to end on each size (list, read, hash, header, decode on both lanes, embed, write to the embedded
     store), after a warm-up folder in the same session so that start-up is left out; once with the GPU decode
     lane and once without it (--no-gpu-decode), with the GPU's utilisation sampled during the first;
  4. the bound: min(model ceiling, CPU-decode ceiling + GPU-decode ceiling); end to end / bound, and what the
     lane adds over the CPU workers alone, as a share of its own ceiling.
Files are distinct (a comment segment each), so the content cache never hits. Its last line is for scripts:
`gpu e2e/bound 12MP X; 1080p Y; 0.3MP Z`.

    python benchmarks/gpu.py                     # on the GPU machine (see docs/performance.md for its table)
    python benchmarks/gpu.py --device cpu        # a smoke test of the same code on CPU tensors (CI runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import make_folder  # noqa: E402
from imgvec import wiring  # noqa: E402
from imgvec.embed import gpu_probe  # noqa: E402
from imgvec.embed.cpu import cpu_info  # noqa: E402
from imgvec.embed.decode import DEFAULT_MAX_PIXELS  # noqa: E402
from imgvec.embed.gpu_decode import decode_batch  # noqa: E402
from imgvec.embed.preprocess import Preprocessor  # noqa: E402
from imgvec.embed.runtime import Precision, Runtime, RuntimeChoice  # noqa: E402
from imgvec.pipeline.executors.decode_worker import model_input  # noqa: E402
from imgvec.pipeline.executors.gpu_lane import LANE_BATCH, GpuDecodeLane, LaneSplit  # noqa: E402
from imgvec.pipeline.executors.local import LocalExecutor  # noqa: E402
from imgvec.pipeline.indexer import Indexer  # noqa: E402
from imgvec.pipeline.options import PipelineOptions  # noqa: E402
from imgvec.pipeline.tuning import cores, default_workers  # noqa: E402
from imgvec.settings import Settings  # noqa: E402
from imgvec.sources.local import LocalFolder  # noqa: E402
from imgvec.stores.embedded import EmbeddedStore  # noqa: E402

SIZES = {"12MP": (4000, 3000), "1080p": (1920, 1080), "0.3MP": (640, 480)}
GPU_FILES = {"12MP": 2000, "1080p": 4000, "0.3MP": 20000}
"""Files per end-to-end run on a GPU machine: several seconds each at the rates the issue expects."""
CPU_FILES = {"12MP": 4, "1080p": 12, "0.3MP": 48}
"""The smoke test's (--device cpu): every stage runs, nothing is a figure."""
WARM_UP = {"cuda": 256, "cpu": 8}
DECODER_SECONDS = 2.0
"""Each decoder's ceiling is timed for about this long."""


def model_ceiling(embedder, device: str, cache_dir: Path) -> gpu_probe.GpuProbe:
    """(1): on a GPU, what --runtime auto measured (the run's own cache); on the CPU, the same code on small
    batches, without compiling (a smoke test)."""
    if device.startswith("cuda"):
        _ = embedder.runtime  # settles through gpu_probe, cached for the runs below
        assert embedder.gpu_probe is not None
        return embedder.gpu_probe
    _, probe = gpu_probe.settle(
        RuntimeChoice("cpu", Runtime.AUTO, Precision.AUTO),
        model_key="benchmark",
        preprocessor=embedder.preprocessor,
        build=embedder.image_encoder,
        cache_dir=cache_dir,
        wanted=[(Runtime.TORCH, Precision.FP32), (Runtime.TORCH, Precision.BF16)],
        batch_sizes=(8, 16),
        compile_best=False,
    )
    return probe


def _decode_file(path: str) -> int:
    pixels, _ = model_input(Path(path).read_bytes(), Preprocessor(), DEFAULT_MAX_PIXELS, 224)
    return pixels.nbytes


def cpu_decode_ceiling(paths: list[Path], workers: int) -> float:
    """(2) CPU: files/s of the reduced decode and preprocessing, one process per core, each reading its files."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_file, [str(p) for p in paths[:workers]]))  # start-up and imports left out
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < DECODER_SECONDS:
            chunk = [str(p) for p in paths[: max(workers * 4, 1)]]
            done += len(list(pool.map(_decode_file, chunk, chunksize=2)))
        return done / (time.perf_counter() - began)


def gpu_decode_ceiling(paths: list[Path], device: str) -> float:
    """(2) GPU: files/s of the lane's batched decode, resize and crop (and its hash thumbnail), bytes in memory."""
    datas = [p.read_bytes() for p in paths[:LANE_BATCH]]
    pre = Preprocessor()
    decode_batch(datas, [1] * len(datas), pre, device)  # nvJPEG's handles, the allocator
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < DECODER_SECONDS:
        results = decode_batch(datas, [1] * len(datas), pre, device)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        done += sum(not isinstance(r, Exception) for r in results)
    return done / (time.perf_counter() - began)


class Utilisation:
    """GPU utilisation (%) sampled by nvidia-smi while a run lasts; None without one."""

    def __init__(self, device: str) -> None:
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None
        if device.startswith("cuda") and shutil.which("nvidia-smi"):
            index = device.split(":")[1] if ":" in device else "0"
            command = ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self._process = subprocess.Popen([*command, "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):  # a header or a blank line
                self.samples.append(float(line.strip()))

    def stop(self) -> float | None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        return sum(self.samples) / len(self.samples) if self.samples else None


def end_to_end(embedder, folder: Path, store_dir: Path, options: PipelineOptions, lane: GpuDecodeLane | None):
    """(steady files/s, mean GPU utilisation %, the lane's own account)."""
    shutil.rmtree(store_dir, ignore_errors=True)
    source = LocalFolder(folder)
    store = EmbeddedStore(store_dir, "images")
    executor = partial(LocalExecutor, lane=lane) if lane is not None else LocalExecutor
    run = Indexer(source, store, embedder, options, label=str(folder), executor=executor)
    with run.session():
        run.process(source.scan(lambda _: None, under=folder / "warm"))
        sampling = Utilisation(embedder.runtime.device) if lane is not None else None
        steady_from, done_before = time.perf_counter(), run.report.embedded
        run.process(source.scan(lambda _: None, under=folder / "main"))
        steady = (run.report.embedded - done_before) / (time.perf_counter() - steady_from)
        lanes = run.executor_status().decode_lanes
    utilisation = sampling.stop() if sampling is not None else None
    if run.report.failures:
        raise SystemExit(f"unexpected failures: {run.report.failures[:3]}")
    return steady, utilisation, lanes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke test of the same code)")
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--model-config-dir", default=None, help="extra open_clip configs (the tests' tiny model)")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--files", type=int, default=None, help="files per end-to-end run (default: per size)")
    parser.add_argument("--work", default=None, help="a folder for the files and stores (default: a temporary one)")
    args = parser.parse_args()
    device = args.device
    on_gpu = device.startswith("cuda")
    sizes = args.sizes.split(",")
    workers = default_workers()
    work = Path(args.work or tempfile.mkdtemp(prefix="imgvec-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        store=str(work / "store"), cache_dir=work / "cache", device=device, model_config_dir=args.model_config_dir
    )
    cpu = cpu_info()
    print(f"machine: {cpu.model}, {cores()} cores, python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    if on_gpu:
        import torch

        print(f"gpu: {gpu_probe.device_name(device)}, torch {torch.__version__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedder = wiring.load_embedder(settings, args.model)
        probe = model_ceiling(embedder, device, work / "cache")
        print("\n[model ceiling] images/s on ready uint8 inputs, by batch size")
        for m in probe.measurements:
            rates = ", ".join(f"{size}: {rate:,.0f}" for size, rate in sorted((m.rates or {}).items()))
            why = m.error or f"min cosine {m.min_cosine:.5f}"
            print(f"  {m.label:<20} {rates or '-':<40} {why}")
        best = probe.best()
        batch, model_rate = best.best_batch
        print(f"  chosen: {best.label} at batch {batch}: {model_rate:,.0f} images/s")

        results: dict[str, dict[str, float | None]] = {}
        for label in sizes:
            count = args.files or (GPU_FILES if on_gpu else CPU_FILES)[label]
            began = time.perf_counter()
            folder = make_folder(work / label, SIZES[label], count, WARM_UP["cuda" if on_gpu else "cpu"], pictures=4)
            paths = sorted((folder / "main").iterdir())
            megabytes = sum(p.stat().st_size for p in paths[:8]) / min(8, len(paths)) / 1e6
            print(f"\n[{label}] {count} JPEGs of {SIZES[label]}, {megabytes:.2f} MB each "
                  f"({time.perf_counter() - began:.0f} s to make)")  # fmt: skip
            row = results.setdefault(label, {})
            row["cpu"] = cpu_decode_ceiling(paths, cores())
            row["gpu"] = gpu_decode_ceiling(paths, device)
            row["bound"] = min(model_rate, row["cpu"] + row["gpu"])
            print(f"  decode ceilings: CPU reduced decode on {cores()} cores {row['cpu']:,.0f}/s; "
                  f"GPU lane {row['gpu']:,.0f}/s; bound min(model, sum) {row['bound']:,.0f}/s")  # fmt: skip
            options = PipelineOptions(workers=workers, batch_size=batch if on_gpu else 16)
            lane = GpuDecodeLane(embedder.preprocessor, device, LaneSplit(workers))
            both, utilisation, lanes = end_to_end(embedder, folder, work / "e2e-store", options, lane)
            cpu_only, _, _ = end_to_end(embedder, folder, work / "e2e-store", replace(options, gpu_decode=False), None)
            row |= {"e2e": both, "cpu_only": cpu_only, "utilisation": utilisation}
            gain = (both - cpu_only) / row["gpu"] if row["gpu"] else 0.0
            busy = f"{utilisation:.0f} %" if utilisation is not None else "not sampled"
            ratio = both / row["bound"]
            print(f"  end to end, {workers} decode workers + GPU lane: {both:,.1f}/s = {ratio:.2f} x bound "
                  f"(GPU busy {busy}); lanes: {lanes}")  # fmt: skip
            print(f"  end to end, CPU workers only: {cpu_only:,.1f}/s; the lane adds {gain:.2f} x its own ceiling")
            shutil.rmtree(work / label, ignore_errors=True)

        ratios = "; ".join(f"{label} {row['e2e'] / row['bound']:.2f}" for label, row in results.items())
        print(f"\ngpu e2e/bound {ratios}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

"""Images per second: the model alone, imgvec end to end, and the simple loop, on the same images and weights.

One run, one machine, same weights (ViT-B-32/random: the compute of ViT-B/32, no download):
  1. ceiling: the image encoder alone on ready tensors (batches of 32), per runtime, all cores; `auto` is what
     --runtime auto chose here after its own measurement (embed/probe.py);
  2. imgvec end to end on 4000x3000 and 1920x1080 JPEGs (list, skip check, read, hash, reduced decode,
     preprocess in worker processes, embed, write to the embedded store), per runtime, inference on every core
     and the decode workers split from the measured costs (pipeline/tuning.py); its ratio to (1). Timed after a
     short warm-up in the same session, so worker start-up and model loading are left out (the full-run time is
     printed too);
  3. the naive loop: open, full decode, open_clip's preprocess, encode one image at a time, torch fp32;
  4. the CPU-work bound: cores / (decode cost per image on one core + model cost per image on all cores x cores),
     i.e. what a perfect pipeline reaches when decode and the model share the same cores; (2) / (4) shows what
     the pipeline itself loses;
  5. decode+preprocess per core: full, reduced, and the entropy-decoding floor of a JPEG (libjpeg's 1/8 scale,
     which keeps only each block's DC value: no decoder through libjpeg can go below it); and a phone-sized HEIC.
Files are distinct (each JPEG carries its own comment segment), so the content cache never hits. The last line is
for scripts: `auto runtime: NAME PRECISION; 12MP e2e/naive X; e2e/bound Y`.

    .venv/bin/python benchmarks/throughput.py                  # ~8 min on 2 cores
    .venv/bin/python benchmarks/throughput.py --runtimes torch,auto --files 32
    .venv/bin/python benchmarks/throughput.py --clip-retrieval /tmp/crvenv/bin/clip-retrieval   # adds (6)
  6. with --clip-retrieval: `clip-retrieval inference` on the same folders and weights (its own venv; see
     docs/performance.md), imgvec / clip-retrieval.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgvec import wiring  # noqa: E402
from imgvec.embed.cpu import cpu_info  # noqa: E402
from imgvec.embed.decode import decode_image  # noqa: E402
from imgvec.pipeline.indexer import Indexer  # noqa: E402
from imgvec.pipeline.options import PipelineOptions  # noqa: E402
from imgvec.pipeline.tuning import cores, split_workers  # noqa: E402
from imgvec.settings import Settings  # noqa: E402
from imgvec.sources.local import LocalFolder  # noqa: E402
from imgvec.stores.embedded import EmbeddedStore  # noqa: E402
from tests.helpers import encode, photo, textured_photo  # noqa: E402

MODEL = "ViT-B-32/random"
RUNTIMES = {
    "torch": {"runtime": "torch"},
    "onnx": {"runtime": "onnx"},
    "int8": {"precision": "int8"},
    "openvino": {"runtime": "openvino", "precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "auto": {},
}
SIZES = {"12MP": (4000, 3000), "1080p": (1920, 1080)}
WARM_UP = 8


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture with a JPEG COM segment after SOI: other bytes (another hash), the same decode work."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def make_folder(root: Path, size: tuple[int, int], count: int, warm: int = WARM_UP, pictures: int = 8) -> Path:
    """``warm`` files under warm/ and ``count`` under main/, made from ``pictures`` distinct photos."""
    bases = [encode(textured_photo(seed, size), quality=90) for seed in range(min(pictures, count))]
    for name, total in (("warm", warm), ("main", count)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(total):
            (folder / f"{i:05d}.jpg").write_bytes(with_comment(bases[i % len(bases)], f"{name}-{i}"))
    return root


def set_torch_threads(threads: int) -> None:
    """torch's thread count is per process, not per model: set it before each measurement."""
    import torch

    torch.set_num_threads(threads)


def ceiling(embedder, batch_size: int, batches: int) -> float:
    set_torch_threads(cores())
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
    embedder.embed_images(pixels)  # first call: allocations, kernel choice
    began = time.perf_counter()
    for _ in range(batches):
        embedder.embed_images(pixels)
    return batch_size * batches / (time.perf_counter() - began)


def decode_cost(folder: Path, reduce_for: int | None, files: int = 8) -> float:
    """Seconds of one core per image: read, hash-free decode, preprocess."""
    from imgvec.embed.preprocess import Preprocessor

    pre = Preprocessor()
    paths = sorted((folder / "main").iterdir())[:files]
    began = time.perf_counter()
    for path in paths:
        pre(decode_image(path.read_bytes(), reduce_for=reduce_for))
    return (time.perf_counter() - began) / len(paths)


def end_to_end(
    settings: Settings, embedder, folder: Path, store_dir: Path, options: PipelineOptions
) -> tuple[float, float]:
    """(steady images/s, full-run seconds)."""
    shutil.rmtree(store_dir, ignore_errors=True)
    source = LocalFolder(folder)
    store = EmbeddedStore(store_dir, "images")
    run = Indexer(source, store, embedder, options, label=str(folder))
    began = time.perf_counter()
    with run.session():
        run.process(source.scan(lambda _: None, under=folder / "warm"))
        steady_from, done_before = time.perf_counter(), run.report.embedded
        run.process(source.scan(lambda _: None, under=folder / "main"))
        steady = (run.report.embedded - done_before) / (time.perf_counter() - steady_from)
    if run.report.failures:
        raise SystemExit(f"unexpected failures: {run.report.failures[:3]}")
    return steady, time.perf_counter() - began


def naive(folder: Path, model_settings: Settings, files: int) -> float:
    """What a first script does: one file at a time, full decode, torchvision preprocessing, batch of one."""
    import open_clip
    import torch
    from PIL import Image

    set_torch_threads(cores())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedder = wiring.load_embedder(model_settings, MODEL)
    model = embedder._model
    preprocess = open_clip.transform.image_transform(224, is_train=False)
    paths = sorted((folder / "main").iterdir())[:files]
    began = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
            model.encode_image(preprocess(image)[None], normalize=True)
    return len(paths) / (time.perf_counter() - began)


def clip_retrieval(binary: str, folder: Path, checkpoint: Path, work: Path, workers: int) -> tuple[float, float]:
    """(images/s, its own seconds for the main folder) of `clip-retrieval inference` on the same files and
    weights. From its own per-batch stats (stats/*.json: model load and warm-up excluded), as the difference
    between the main folder and the warm-up folder, so its DataLoader start-up cancels out as imgvec's does."""
    seconds, counts = {}, {}
    for name in ("warm", "main"):
        out = work / f"clip-retrieval-{name}"
        shutil.rmtree(out, ignore_errors=True)
        command = [binary, "inference", "--input_dataset", str(folder / name), "--output_folder", str(out)]
        command += ["--input_format", "files", "--batch_size", "32", "--num_prepro_workers", str(workers)]
        command += ["--enable_text", "False", "--enable_metadata", "False", "--use_jit", "False"]
        command += ["--clip_model", f"open_clip:ViT-B-32/{checkpoint}"]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        stats = [json.loads(path.read_text()) for path in (out / "stats").glob("*.json")]
        seconds[name] = sum(s["total_duration"] for s in stats)
        counts[name] = sum(s["sample_count"] for s in stats)
    return (counts["main"] - counts["warm"]) / (seconds["main"] - seconds["warm"]), seconds["main"]


def decode_table(work: Path, folders: dict[str, Path]) -> dict[str, dict[str, float]]:
    """(5): images per second of one core for each kind of file, full vs reduced, and the JPEG entropy floor."""
    from PIL import Image

    from imgvec.embed.preprocess import Preprocessor

    pre = Preprocessor()

    def rate(decode, paths: list[Path]) -> float:
        datas = [path.read_bytes() for path in paths]
        decode(datas[0])
        began = time.perf_counter()
        for data in datas:
            decode(data)
        return len(datas) / (time.perf_counter() - began)

    def floor(data: bytes) -> None:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (image.size[0] // 8, image.size[1] // 8))
        image.load()

    rows: dict[str, dict[str, float]] = {}
    heic = work / "heic"
    heic.mkdir()
    for i in range(4):  # phone-sized: 4032x3024, smooth like a phone's denoised output (grain makes HEVC crawl)
        photo(40 + i, (4032, 3024)).save(heic / f"{i}.heic", "HEIF", quality=80)
    cases = {label: sorted((folder / "main").iterdir())[:8] for label, folder in folders.items()}
    cases["HEIC"] = sorted(heic.iterdir())
    for label, paths in cases.items():
        row = rows.setdefault(label, {})
        row["full"] = rate(lambda d: pre(decode_image(d)), paths[:4])
        row["reduced"] = rate(lambda d: pre(decode_image(d, reduce_for=224)), paths)
        if label != "HEIC":
            row["floor"] = rate(floor, paths)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=64, help="images per end-to-end run")
    parser.add_argument("--naive-files", type=int, default=16)
    parser.add_argument("--runtimes", default=None, help="default: every runtime this CPU runs, then auto")
    parser.add_argument("--sizes", default="12MP,1080p")
    parser.add_argument("--batches", type=int, default=6, help="batches timed for the ceiling")
    parser.add_argument("--threads", type=int, default=None, help="inference threads end to end (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers end to end (default: split)")
    parser.add_argument(
        "--clip-retrieval",
        metavar="BIN",
        help="a clip-retrieval executable (installed in its own venv: it pins numpy<2, pyarrow<16, open_clip<3)",
    )
    args = parser.parse_args()
    cpu = cpu_info()
    default = ["torch", "onnx", "openvino", "int8", *(["bf16"] if cpu.bf16 else []), "auto"]
    runtimes = args.runtimes.split(",") if args.runtimes else default
    sizes = args.sizes.split(",")

    work = Path(tempfile.mkdtemp(prefix="imgvec-throughput-"))
    base = Settings(store=str(work / "store"), cache_dir=work / "cache", device="cpu")
    print(f"machine: {cpu.model}, {cores()} cores, python {platform.python_version()}")
    print(f"cpu flags: {' '.join(cpu.notable_flags()) or 'no AVX2'}")
    try:
        folders = {}
        for label in sizes:
            began = time.perf_counter()
            folders[label] = make_folder(work / label, SIZES[label], args.files)
            files = list((folders[label] / "main").iterdir())
            mb = sum(p.stat().st_size for p in files) / len(files) / 1e6
            made = time.perf_counter() - began
            print(f"images: {args.files} x {label} {SIZES[label]} JPEG, {mb:.1f} MB each ({made:.0f} s to make)")
        decode = {label: decode_cost(folders[label], 224) for label in sizes}

        results: dict[str, dict[str, float]] = {}
        chosen = ""
        for name in runtimes:
            choice_settings = replace(base, **RUNTIMES[name])
            threads = args.threads or cores()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                full = wiring.load_embedder(replace(choice_settings, threads=cores()), MODEL)
                piped = wiring.load_embedder(replace(choice_settings, threads=threads), MODEL)
            if name == "auto":
                chosen = f"{piped.runtime.runtime.value} {piped.runtime.precision.value}"
            row = results.setdefault(name, {})
            row["ceiling"] = ceiling(full, 32, args.batches)
            model_seconds = cores() / row["ceiling"]
            print(f"\n[{name}] {piped.runtime.describe()}")
            if piped.runtime.reason and name == "auto":
                print(f"  why: {piped.runtime.reason}")
            print(f"  ceiling (model only, {cores()} threads):   {row['ceiling']:6.2f} images/s")
            set_torch_threads(threads)
            for label in sizes:
                workers = args.workers or split_workers(decode[label], model_seconds)
                options = PipelineOptions(batch_size=32, workers=workers, io_concurrency=8)
                steady, total = end_to_end(piped, piped, folders[label], work / "e2e-store", options)
                bound = cores() / (decode[label] + model_seconds)
                row[label] = steady
                row[f"{label}-bound"] = bound
                print(
                    f"  end to end {label:>5} ({workers} decode workers, {threads} threads): {steady:6.2f} images/s "
                    f"= {steady / row['ceiling']:.2f} x ceiling, {steady / bound:.2f} x CPU-work bound "
                    f"({bound:.2f}); full run {total:.1f} s for {args.files + WARM_UP}"
                )
            del full, piped

        print("\n[naive loop] full decode + open_clip preprocess + batch of 1, torch fp32, all cores")
        naive_rates = {}
        naive_settings = replace(base, threads=cores(), runtime="torch")
        for label in sizes:
            naive_rates[label] = rate = naive(folders[label], naive_settings, args.naive_files)
            print(f"  {label:>5}: {rate:6.2f} images/s")
            for name, row in results.items():
                if label in row:
                    print(f"         imgvec {name} / naive = {row[label] / rate:5.2f} x")

        print("\n[decode + preprocess, one core] images/s: full, reduced (what the workers do), JPEG entropy floor")
        for label, row in decode_table(work, folders).items():
            floor = ""
            if "floor" in row:
                floor = f", floor {row['floor']:5.1f}/s (reduced / floor = {row['reduced'] / row['floor']:.2f})"
            print(
                f"  {label:>5}: full {row['full']:5.1f}/s, reduced {row['reduced']:5.1f}/s "
                f"({row['reduced'] / row['full']:.2f} x full){floor}"
            )

        if args.clip_retrieval:
            checkpoint = work / "cache" / "random" / "ViT-B-32-seed0.pt"
            workers = args.workers or max(1, cores() - 1)
            print(f"\n[clip-retrieval inference] same files and weights, batch 32, {workers} preprocessing worker(s)")
            for label in sizes:
                rate, total = clip_retrieval(args.clip_retrieval, folders[label], checkpoint, work, workers)
                print(f"  {label:>5}: {rate:6.2f} images/s (its own batch timings: {total:.1f} s for the main folder)")
                for name, row in results.items():
                    if label in row:
                        print(f"         imgvec {name} / clip-retrieval = {row[label] / rate:5.2f} x")

        print()
        if "torch" in results:
            for name, row in results.items():
                if name != "torch":
                    print(f"ceiling {name} / torch fp32 = {row['ceiling'] / results['torch']['ceiling']:.2f} x")
        if "auto" in results and "12MP" in results["auto"]:
            auto = results["auto"]
            e2e_naive = auto["12MP"] / naive_rates["12MP"]
            bounds = ", ".join(f"{label} {auto[label] / auto[f'{label}-bound']:.2f}" for label in sizes)
            print(f"auto end to end / CPU-work bound: {bounds}")
            e2e_bound = auto["12MP"] / auto["12MP-bound"]
            print(f"auto runtime: {chosen}; 12MP e2e/naive {e2e_naive:.2f}; e2e/bound {e2e_bound:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()

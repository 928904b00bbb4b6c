"""imgvec as a Lambda under AWS's runtime emulator: cold start, warm per-image time, and the Lambda executor
against the in-process pipeline on the same images; with a projection for 1 M images.

    python benchmarks/lambda.py [--images 200] [--instances 2] [--model ViT-B-32/random]

1. Cold start: a fresh emulator process (aws-lambda-rie + awslambdaric + imgvec's handler) started, and the worker's
   call ``{"imageUrl", "useCache"}`` answered: process start to first answer, median of three.
2. Warm: the same call again and again on that instance, vs the same image through ``POST /api/embed`` of a
   running ``imgvec serve`` (both fetch the object from S3 and embed it alone, no cache).
3. Executor: ``imgvec ingest s3://…`` in-process vs ``--executor lambda`` over N emulator instances behind the test
   front (one invocation per instance at a time, 429 otherwise), on the same 1024x768 photo-like JPEGs; the ratio
   of their wall times, and bytes per image between driver and function.
4. A projection for 1 M images at 10, 100 and 1,000 concurrent invocations from the measured per-image function
   time (each emulator runs one thread, so this machine's one-core time per image stands for one Lambda vCPU's),
   at the published x86 price, beside the seed's estimate.

Model: ViT-B-32 with random weights (full-size compute; no weights can be downloaded here). Check ``uptime`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from imgvec import wiring  # noqa: E402
from imgvec.embed.bundle import export_bundle  # noqa: E402
from imgvec.embed.cpu import cpu_info  # noqa: E402
from imgvec.pipeline.estimate import LAMBDA_PRICE_GB_SECOND, LAMBDA_PRICE_PER_MILLION_REQUESTS  # noqa: E402
from imgvec.settings import Settings  # noqa: E402
from tests.helpers import encode, textured_photo  # noqa: E402
from tests.lambdaemu import Emulator, Front, lambda_client  # noqa: E402
from tests.s3server import SeaweedServer, free_port  # noqa: E402

SEED_SECONDS_PER_IMAGE = (0.5, 2.0)
SEED_DOLLARS_PER_100K = 3.80
MEMORY_GB = 3.0
"""The projection's function memory: 3 GB buys about 1.7 vCPUs; the model runs on one thread here."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument(
        "--function-runtime",
        default="auto",
        metavar="RUNTIME[:PRECISION]",
        help="What the function runs (IMGVEC_RUNTIME/IMGVEC_PRECISION), e.g. onnx:fp32 for a CPU without bf16.",
    )
    args = parser.parse_args()
    print(f"uptime: {os.getloadavg()}; cpu: {cpu_info().describe()}")
    with tempfile.TemporaryDirectory(prefix="imgvec-lambda-bench-") as scratch:
        run(Path(scratch), args)


def run(scratch: Path, args: argparse.Namespace) -> None:
    cache = Path(os.environ.get("IMGVEC_CACHE_DIR") or Path.home() / ".cache" / "imgvec")
    bundle = cache / "bench-bundles" / args.model.replace("/", "-")
    if not (bundle / "bundle.json").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedder = wiring.load_embedder(Settings(cache_dir=cache), args.model)
        began = time.perf_counter()
        export_bundle(embedder, bundle)
        print(f"bundle exported in {time.perf_counter() - began:.0f}s: {bundle}")
    sizes = {path.name: path.stat().st_size for path in bundle.iterdir()}
    print("bundle files: " + ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in sorted(sizes.items())))

    s3 = SeaweedServer(scratch / "seaweed")
    s3.start()
    try:
        client = s3.client()
        client.create_bucket(Bucket="bench")
        for i in range(args.images):
            body = encode(textured_photo(i, (1024, 768)), quality=90)
            client.put_object(Bucket="bench", Key=f"photos/{i:04d}.jpg", Body=body)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("IMGVEC_", "AWS_"))}
        function_env = {**base, **s3.env(), "IMGVEC_MODEL_BUNDLE": str(bundle), "IMGVEC_THREADS": "1"}
        runtime_name, _, precision = args.function_runtime.partition(":")
        function_env |= {"IMGVEC_RUNTIME": runtime_name, "IMGVEC_PRECISION": precision or "auto"}
        call = {"imageUrl": "s3://bench/photos/0000.jpg", "useCache": False}

        colds = []
        for attempt in range(3):
            began = time.perf_counter()
            # A fresh /tmp each time, as a new Lambda instance has: OpenVINO compiles its graph again.
            cold_env = {**function_env, "IMGVEC_CACHE_DIR": str(scratch / f"tmp{attempt}")}
            instance = Emulator(scratch / f"cold{attempt}.log", cold_env).start()
            answer = json.loads(
                lambda_client(instance.endpoint)
                .invoke(FunctionName="function", Payload=json.dumps(call))["Payload"]
                .read()
            )
            colds.append(time.perf_counter() - began)
            assert answer["data"]["dimension"] > 0, answer
            if attempt < 2:
                instance.stop()
        warm = []
        lam = lambda_client(instance.endpoint)
        for _ in range(20):
            began = time.perf_counter()
            lam.invoke(FunctionName="function", Payload=json.dumps(call))["Payload"].read()
            warm.append(time.perf_counter() - began)
        instance.stop()
        api = api_embed(scratch, s3, args.model, cache, call)

        driver = {**base, **s3.env(), "IMGVEC_MODEL": args.model, "IMGVEC_CACHE_DIR": str(cache)}
        local_seconds = ingest(driver, scratch / "local", [])
        instances = [Emulator(scratch / f"rie{i}.log", function_env).start() for i in range(args.instances)]
        front = Front(instances)
        flags = front.flags("--lambda-concurrency", str(args.instances), "--lambda-batch-size", "20")
        # A first pass warms every instance (its cold start is measured above), then the measured one.
        ingest(driver, scratch / "warmup", flags)
        busy_before = front.counts.busy_seconds
        lambda_seconds = ingest(driver, scratch / "lambda", flags)
        busy = front.counts.busy_seconds - busy_before
        progress = json.loads(
            subprocess.run(
                [sys.executable, "-m", "imgvec.cli", "progress", "--json"],
                env={**driver, "IMGVEC_STORE": str(scratch / "lambda")},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        front.close()
        for emulator in instances:
            emulator.stop()
    finally:
        s3.stop()

    per_image = busy / args.images
    runtime = f"{progress['runtime']} ({progress['runtime_reason']})"
    cold, warm_ms, api_ms = statistics.median(colds), statistics.median(warm) * 1000, statistics.median(api) * 1000
    print(f"runtime in the function: {runtime.strip()}")
    print(f"cold start (process start to first answer): {cold:.2f}s (runs: {', '.join(f'{c:.2f}' for c in colds)})")
    print(f"warm, one image per call: {warm_ms:.0f} ms median; /api/embed: {api_ms:.0f} ms median")
    print(f"ingest {args.images} images (each run also loads the model in the driver):")
    print(f"  in-process {local_seconds:.1f}s ({args.images / local_seconds:.1f}/s)")
    print(
        f"  lambda x{args.instances} {lambda_seconds:.1f}s ({args.images / lambda_seconds:.1f}/s): "
        f"{lambda_seconds / local_seconds:.2f}x the in-process time"
    )
    print(
        f"function time per image (invocation time summed / images; batches of 20, one thread): {per_image:.3f}s; "
        f"bytes per image between driver and function: {progress['bytes_per_image']:.0f}; "
        f"invocations {progress['invocations']}, throttles {progress['throttles']}"
    )
    print("projection for 1,000,000 images (not a measurement on AWS):")
    print(
        f"  seed's estimate: {SEED_SECONDS_PER_IMAGE[0]}-{SEED_SECONDS_PER_IMAGE[1]} s/image, "
        f"${SEED_DOLLARS_PER_100K * 10:.2f}"
    )
    for concurrency in (10, 100, 1000):
        hours = 1e6 * per_image / concurrency / 3600
        compute = 1e6 * per_image * MEMORY_GB * LAMBDA_PRICE_GB_SECOND
        requests = 1e6 / 100 * LAMBDA_PRICE_PER_MILLION_REQUESTS / 1e6
        print(
            f"  {concurrency:>5} concurrent, batches of 100, {MEMORY_GB:g} GB: {hours:.2f} h, "
            f"${compute + requests:.2f} (compute ${compute:.2f} + requests ${requests:.2f})"
        )
    print(
        f"lambda: cold start {cold:.2f} s, warm {warm_ms:.0f} ms/image (api/embed {api_ms:.0f} ms), "
        f"executor x{args.instances}: {lambda_seconds / local_seconds:.2f}x the in-process time, "
        f"{progress['bytes_per_image']:.0f} bytes/image"
    )


def api_embed(scratch: Path, s3: SeaweedServer, model: str, cache: Path, call: dict) -> list[float]:
    """The same call through ``POST /api/embed`` of ``imgvec serve`` (warmed first)."""
    port = free_port()
    env = {
        **os.environ,
        **s3.env(),
        "IMGVEC_STORE": str(scratch / "serve"),
        "IMGVEC_MODEL": model,
        "IMGVEC_CACHE_DIR": str(cache),
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/embed"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.post(url, json=call, timeout=120).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("imgvec serve did not answer /api/embed")
            time.sleep(0.5)
        times = []
        for _ in range(20):
            began = time.perf_counter()
            assert httpx.post(url, json=call, timeout=120).status_code == 200
            times.append(time.perf_counter() - began)
        return times
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def ingest(env: dict[str, str], store: Path, flags: list[str]) -> float:
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "imgvec.cli", "ingest", "s3://bench/photos/", "--json", *flags],
        env={**env, "IMGVEC_STORE": str(store)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return time.perf_counter() - began


if __name__ == "__main__":
    main()

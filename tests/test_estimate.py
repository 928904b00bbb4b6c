"""`imgvec estimate`: a streaming count, a calibration run of the real pipeline on a sample, and the two cost
models; the index is never written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from imgvec.pipeline.estimate import LAMBDA_PRICE_GB_SECOND, PerImageModel, estimate
from imgvec.pipeline.plan import Plan
from tests.helpers import encode, photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]
VALID = 40


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(VALID):
        sub = root / f"day{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:03d}.jpg").write_bytes(encode(photo(3000 + i, (96, 72))))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    return root


def test_estimate_counts_calibrates_and_prices_without_writing(folder: Path, cli_env: dict[str, str]) -> None:
    flags = ["--lambda-seconds-per-image", "1.5", "--lambda-memory-gb", "3", "--lambda-images-per-request", "10"]
    result = run_cli(
        [*MODEL, "estimate", str(folder), "--json", "--workers", "1", *flags, "--lambda-concurrency", "4"], cli_env
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    plan = found["plan"]
    assert (plan["listed"], plan["would_process"], plan["unchanged"]) == (VALID + 1, VALID + 1, 0)
    assert plan["listed_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert plan["rate_basis"] == "calibration" and plan["calibration_files"] == VALID + 1
    assert plan["images_per_second"] > 0
    assert found["machine_seconds"] == pytest.approx((VALID + 1) / plan["images_per_second"])
    assert found["serverless_compute_cost"] == pytest.approx((VALID + 1) * 1.5 * 3 * LAMBDA_PRICE_GB_SECOND)
    assert found["serverless_request_cost"] == pytest.approx(5 * 0.20 / 1e6)
    assert found["serverless_seconds"] == pytest.approx((VALID + 1) * 1.5 / 4)
    assert found["s3_get_cost"] is None
    assert found["runtime"].endswith(" on cpu") and found["decode_workers"] == 1  # --workers 1 is kept
    assert found["runtime_reason"].startswith("fastest measured on this CPU")  # --runtime auto, and why
    assert not Path(cli_env["IMGVEC_STORE"]).exists()  # calibration wrote to a scratch store only


def test_estimate_counts_only_what_is_left(folder: Path, cli_env: dict[str, str]) -> None:
    assert run_cli([*MODEL, "ingest", str(folder), "--max-files", "21", "--workers", "0"], cli_env).returncode == 3
    text = run_cli(["estimate", str(folder), "--sample", "8", "--workers", "1", "--price-per-hour", "0.5"], cli_env)
    assert text.returncode == 0, text.stderr
    assert f"images: {VALID + 1} " in text.stdout
    assert "to embed: 21 " in text.stdout and "20 already indexed" in text.stdout  # the corrupt file is retried
    assert "calibration: 8 sampled files" in text.stdout
    assert "runtime: " in text.stdout and "(fastest measured on this CPU (" in text.stdout
    assert "this machine (" in text.stdout and "at the given hourly price" in text.stdout
    assert "per-image model:" in text.stdout and "measured here" in text.stdout


def test_bad_source_is_a_clear_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    result = run_cli([*MODEL, "estimate", str(tmp_path / "nowhere")], cli_env)
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_per_image_time_defaults_to_core_seconds_measured_here() -> None:
    plan = Plan(would_process=1_000_000, images_per_second=8.0)
    result = estimate(plan, cores=2, serverless=PerImageModel(memory_gb=2.0, concurrency=1000))
    assert result.per_image_seconds == pytest.approx(0.25)
    assert result.machine_seconds == pytest.approx(125_000)
    assert result.serverless_seconds == pytest.approx(250)
    assert result.serverless_compute_cost == pytest.approx(1_000_000 * 0.25 * 2.0 * LAMBDA_PRICE_GB_SECOND)
    assert result.serverless_request_cost == pytest.approx(0.20)
    assert estimate(plan, cores=2, s3_source=True).s3_get_cost == pytest.approx(0.4)
    assert math.isclose(estimate(plan, cores=2, price_per_hour=3.6).machine_cost, 125.0)

"""Real `imgvec ingest` processes killed with SIGKILL at several points, then resumed: the end state holds every
valid image exactly once, nothing committed is embedded again, and progress reads 'interrupted' after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from imgvec.pipeline.journal import RunJournal
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import assert_children_exit, encode, photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]
VALID = 48


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(VALID):
        sub = root / f"day{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:03d}.jpg").write_bytes(encode(photo(2000 + i, (96, 72))))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (root / "empty.png").write_bytes(b"")
    return root


def start_ingest(folder: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    args = [*MODEL, "ingest", str(folder), "--batch-size", "4", "--workers", "1", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def documents(env: dict[str, str]) -> int:
    store = EmbeddedStore(env["IMGVEC_STORE"], "images")
    return store.stats().documents if store.exists() else 0


def run_recorded(state_file: Path) -> bool:
    """The run has written its row (the state file alone exists a moment earlier)."""
    return state_file.exists() and RunJournal(state_file).latest() is not None


def progress(env: dict[str, str]) -> dict:
    result = run_cli(["progress", "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_kill_9_at_several_points_then_resume(folder: Path, cli_env: dict[str, str]) -> None:
    state_file = Path(cli_env["IMGVEC_STORE"]) / "_imgvec" / "images.sqlite"
    kill_points = [
        ("right after the run starts", lambda: run_recorded(state_file)),
        ("after a few batches", lambda: documents(cli_env) >= 8),
        ("midway", lambda: documents(cli_env) >= 28),
    ]
    seen_progress_running = False
    for label, reached in kill_points:
        run = start_ingest(folder, cli_env, "--rate-limit", "4")
        try:
            wait_for(lambda run=run, reached=reached: reached() or run.poll() is not None)
            if not seen_progress_running and documents(cli_env) > 0:
                live = progress(cli_env)
                assert live["state"] == "running", label
                assert set(live) >= {
                    "state",
                    "processed",
                    "succeeded",
                    "failed",
                    "skipped",
                    "remaining",
                    "rate",
                    "eta_seconds",
                    "started_at",
                }
                assert live["processed"] >= 0 and live["started_at"]
                seen_progress_running = True
            assert run.poll() is None, f"the run ended before the kill point {label!r}"
            workers = psutil.Process(run.pid).children(recursive=True)
            os.kill(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
            assert_children_exit(workers)
        finally:
            if run.poll() is None:
                run.kill()
        after_kill = progress(cli_env)
        assert after_kill["state"] == "interrupted", label  # killed: never reads as running
        committed = documents(cli_env)
        assert committed < VALID, label

    before_final = documents(cli_env)
    final = run_cli([*MODEL, "ingest", str(folder), "--batch-size", "4", "--json"], cli_env)
    assert final.returncode == 3, final.stderr  # completes; the two bad files are failures
    report = json.loads(final.stdout)
    assert report["unchanged"] == before_final  # nothing committed before is embedded again
    assert report["embedded"] + report["cache_hits"] == VALID - before_final
    assert seen_progress_running

    store = EmbeddedStore(cli_env["IMGVEC_STORE"], "images")
    rows = store._open().search().select(["file_path"]).limit(10_000).to_arrow()["file_path"].to_pylist()
    expected = {str(p) for p in folder.rglob("img*.jpg")}
    assert len(rows) == len(set(rows)) == VALID  # every valid image exactly once
    assert set(rows) == expected
    assert progress(cli_env)["state"] == "finished"

    failures = json.loads(run_cli(["failures", "--json"], cli_env).stdout)
    assert sorted(Path(f["file_path"]).name for f in failures) == ["corrupt.jpg", "empty.png"]
    assert all(set(f) == {"file_path", "stage", "reason", "attempts"} and f["stage"] == "decode" for f in failures)

    metrics = run_cli(["metrics"], cli_env)  # the latest run's own figures
    assert metrics.returncode == 0
    assert f'imgvec_images_embedded_total{{index="images"}} {report["embedded"]}' in metrics.stdout
    assert f'imgvec_images_skipped_total{{index="images"}} {before_final + 2}' in metrics.stdout
    # What embedded, why, and with how many decode workers (split from the measured costs: no --workers given).
    finished = progress(cli_env)
    assert finished["runtime"].endswith(" on cpu") and finished["decode_workers"] >= 1
    assert finished["runtime_reason"].startswith("fastest measured on this CPU")
    assert finished["executor"] == "local" and finished["workers"] is None
    info = f'imgvec_runtime_info{{executor="local",index="images",reason="{finished["runtime_reason"]}"'
    assert info in metrics.stdout
    assert f'runtime="{finished["runtime"]}",workers="{finished["decode_workers"]}"}} 1.0' in metrics.stdout


def test_sigterm_finishes_the_batch_and_saves_state(folder: Path, cli_env: dict[str, str]) -> None:
    run = start_ingest(folder, cli_env, "--rate-limit", "6")
    wait_for(lambda: documents(cli_env) >= 4 or run.poll() is not None)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "finishing the current batch" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    state = progress(cli_env)
    assert state["state"] == "interrupted" and state["succeeded"] == documents(cli_env)


def test_a_second_ingest_of_the_same_index_is_refused(folder: Path, cli_env: dict[str, str]) -> None:
    first = start_ingest(folder, cli_env, "--rate-limit", "1")
    try:
        wait_for(lambda: documents(cli_env) >= 1 or first.poll() is not None)
        second = run_cli([*MODEL, "ingest", str(folder)], cli_env)
        assert second.returncode == 1
        assert "another ingest into this index is running" in second.stderr and str(first.pid) in second.stderr
    finally:
        first.kill()
        first.wait(timeout=30)


def test_dry_run_writes_nothing(folder: Path, cli_env: dict[str, str]) -> None:
    store_dir = Path(cli_env["IMGVEC_STORE"])
    plan = run_cli([*MODEL, "ingest", str(folder), "--dry-run", "--json"], cli_env)
    assert plan.returncode == 0, plan.stderr
    result = json.loads(plan.stdout)
    assert result["would_process"] == VALID + 2 and result["unchanged"] == 0
    assert result["would_process_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert result["rate_basis"] == "calibration" and result["estimated_seconds"] > 0
    assert not store_dir.exists()  # no store, no index, no state

    first_ten = run_cli([*MODEL, "ingest", str(folder), "--max-files", "10"], cli_env)
    assert first_ten.returncode == 3  # the two bad files sort first and fail
    listing = sorted(str(p) for p in store_dir.rglob("*"))
    again = json.loads(run_cli(["ingest", str(folder), "--dry-run", "--json"], cli_env).stdout)
    assert (again["unchanged"], again["known_failures"]) == (8, 2)
    assert again["would_process"] == VALID + 2 - 10
    assert again["rate_basis"] == "last-run"
    assert sorted(str(p) for p in store_dir.rglob("*")) == listing  # still nothing written
    text = run_cli(["ingest", str(folder), "--dry-run"], cli_env)
    assert "would process 40 files" in text.stdout and "nothing was written" in text.stdout

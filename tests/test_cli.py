"""The real `imgvec` command in subprocesses, as scripts and users run it (tiny model, offline)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.helpers import encode, photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    for i in range(6):
        (root / "trip" / f"img{i}.jpg").write_bytes(encode(photo(100 + i)))
    (root / "logo.png").write_bytes(encode(photo(200), "PNG"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return root


def test_ingest_status_search_round_trip(photos: Path, cli_env: dict[str, str]) -> None:
    result = run_cli([*MODEL, "ingest", str(photos), "--json"], cli_env)
    assert result.returncode == 3, result.stderr  # finished, with one failed file
    report = json.loads(result.stdout)
    assert (report["embedded"], report["failed"]) == (7, 1)
    assert report["failures"][0]["file_path"].endswith("broken.jpg")
    assert report["failures"][0]["stage"] == "decode"
    assert "random weights" in result.stderr  # announced, never silent

    status = run_cli(["status", "--json"], cli_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {
        "index": "images",
        "documents": 7,
        "with_vector": 7,
        "without_vector": 0,
        "dimension": 512,
        "model": "imgvec-tiny/random",
        "random_weights": True,
    }

    # no --model: search uses the model recorded in the index
    query = photos / "trip" / "img3.jpg"
    found = run_cli(["search", "--image", str(query), "-k", "3", "--json"], cli_env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3
    assert hits[0]["file_path"] == str(query) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert {"file_name", "file_extension", "file_size", "bucket", "file_key", "s3_url", "indexed_at"} <= set(hits[0])

    text = run_cli(["search", "a red car", "-k", "10", "--ext", "png", "--json"], cli_env)
    assert text.returncode == 0, text.stderr
    assert [h["file_path"] for h in json.loads(text.stdout)] == [str(photos / "logo.png")]

    table = run_cli(["search", "a red car", "-k", "2"], cli_env)
    assert table.returncode == 0 and "score" in table.stdout and "img" in table.stdout

    again = run_cli(["ingest", str(photos), "--json"], cli_env)
    assert json.loads(again.stdout)["unchanged"] == 7 and json.loads(again.stdout)["embedded"] == 0


def test_other_model_is_refused_naming_both(photos: Path, cli_env: dict[str, str]) -> None:
    first = run_cli([*MODEL, "ingest", str(photos / "trip")], cli_env)
    assert first.returncode == 0
    assert "6/6 processed: 6 ok, 0 failed, 0 skipped" in first.stderr  # plain progress lines when not a TTY
    assert "6 embedded, 0 reused" in first.stdout
    other = run_cli(["--model", "ViT-B-32/random", "ingest", str(photos / "trip")], cli_env)
    assert other.returncode == 1
    assert "imgvec-tiny/random" in other.stderr and "ViT-B-32/random" in other.stderr
    assert "Traceback" not in other.stderr


def test_setup_errors_are_one_clear_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    missing = run_cli([*MODEL, "ingest", str(tmp_path / "nowhere")], cli_env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    no_index = run_cli(["search", "cats"], cli_env)
    assert no_index.returncode == 1 and "imgvec ingest" in no_index.stderr

    no_weights = {**cli_env, "HF_HOME": str(tmp_path / "empty-hf-home")}
    offline = run_cli(["--model", "ViT-B-32/openai", "ingest", str(tmp_path)], no_weights)
    assert offline.returncode == 1
    assert "weights of ViT-B-32/openai are not in the local" in offline.stderr and "Traceback" not in offline.stderr

    bad_spec = run_cli(["--model", "ViT-B-32", "ingest", str(tmp_path)], cli_env)
    assert bad_spec.returncode == 1 and "no weights" in bad_spec.stderr


def test_an_unreachable_cluster_is_one_line_not_the_clients_tracebacks(cli_env: dict[str, str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli(["--store", f"http://127.0.0.1:{port}", "status"], cli_env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr  # it was 265 lines of urllib3 tracebacks
    assert lines[0].startswith(f"error: cannot reach http://127.0.0.1:{port}") and "check --store" in lines[0]
    verbose = run_cli(["-v", "--store", f"http://127.0.0.1:{port}", "status"], cli_env)
    assert "Traceback" in verbose.stderr  # -v still shows what the client saw


def test_bad_flags_exit_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    assert run_cli(["search", "-k", "0", "cats"], cli_env).returncode == 2
    assert run_cli(["ingest", str(tmp_path), "--batch-size", "nope"], cli_env).returncode == 2
    both = run_cli(["search", "cats", "--image", "x.jpg"], cli_env)
    assert both.returncode == 2 and "either" in both.stderr


def test_bad_query_image_is_a_clear_error(tmp_path: Path, photos: Path, cli_env: dict[str, str]) -> None:
    assert run_cli([*MODEL, "ingest", str(photos / "trip")], cli_env).returncode == 0
    bad = run_cli(["search", "--image", str(photos / "broken.jpg")], cli_env)
    assert bad.returncode == 1 and "broken.jpg" in bad.stderr and "truncated" in bad.stderr
    gone = run_cli(["search", "--image", str(tmp_path / "gone.jpg")], cli_env)
    assert gone.returncode == 1 and "cannot read query image" in gone.stderr


def test_interrupted_ingest_continues_where_it_stopped(tmp_path: Path, cli_env: dict[str, str]) -> None:
    import signal
    import subprocess
    import sys
    import time

    from imgvec.stores.embedded import EmbeddedStore

    root = tmp_path / "many"
    root.mkdir()
    for i in range(120):
        (root / f"p{i:03d}.jpg").write_bytes(encode(photo(1000 + i, (96, 64))))
    run = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", *MODEL, "ingest", str(root), "--batch-size", "2"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = EmbeddedStore(cli_env["IMGVEC_STORE"], "images")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (store.exists() and store.stats().documents >= 4):
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "run the same command again" in stderr and "Traceback" not in stderr
    done = EmbeddedStore(cli_env["IMGVEC_STORE"], "images").stats().documents
    assert 4 <= done < 120

    again = run_cli(["ingest", str(root), "--json"], cli_env)
    report = json.loads(again.stdout)
    assert report["unchanged"] == done and report["embedded"] == 120 - done
    assert EmbeddedStore(cli_env["IMGVEC_STORE"], "images").stats().documents == 120


# -- offline: the default model's weights are not on this machine ------------------------------------


def test_offline_the_default_model_fails_in_one_line_within_seconds(photos: Path, cli_env, tmp_path) -> None:
    """The hub client retried five times with backoff and printed each retry twice: 51 s and 44 lines."""
    import time

    offline = {**cli_env, "HF_HOME": str(tmp_path / "empty-hf-home")}  # no weights cached, whatever this machine has
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"
    no_hub = {k: v for k, v in offline.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": unreachable}
    for env, why in ((offline, "HF_HUB_OFFLINE is set"), (no_hub, f"{unreachable} cannot be reached")):
        began = time.monotonic()
        result = run_cli(["ingest", str(photos)], env)
        assert time.monotonic() - began < 30
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert "ViT-B-32/openai are not in the local Hugging Face cache" in line and why in line
        assert "Model weights" in line and "ViT-B-32/random" in line


def test_offline_a_dry_run_counts_files_and_bytes_without_the_model(photos: Path, cli_env, tmp_path) -> None:
    offline = {**cli_env, "HF_HOME": str(tmp_path / "empty-hf-home")}
    result = run_cli(["ingest", str(photos), "--dry-run", "--max-files", "100", "--json"], offline)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["would_process"] == 8 and plan["would_process_bytes"] > 0 and plan["estimated_seconds"] is None
    assert "not in the local Hugging Face cache" in plan["model_unavailable"]
    shown = run_cli(["ingest", str(photos), "--dry-run"], offline)
    assert shown.returncode == 0 and "would process 8 files" in shown.stdout
    assert "time unknown: it is measured with the model" in shown.stdout
    assert not (Path(cli_env["IMGVEC_STORE"]) / "images.lance").exists()  # nothing written

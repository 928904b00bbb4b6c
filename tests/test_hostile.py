"""Hostile files and a failing environment, on real files, folders, mounts and processes: nothing crashes, hangs,
balloons, or stays failed after the cause is gone.

Mount tests (a full disk, a read-only store, no /dev/shm) run the CLI inside ``unshare -m``: the mounts exist only
in that private namespace and vanish with it. They need root, as in CI.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from imgvec import wiring
from imgvec.documents import document_id
from imgvec.embed.decode import decode_image
from imgvec.errors import DecodeWorkersError, ImageDecodeError, ModelLoadError
from imgvec.paths import fs_path, to_text
from imgvec.pipeline.continuous.changes import ChangeTracker
from imgvec.pipeline.indexer import Indexer, index_source
from imgvec.pipeline.journal import RunJournal
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.tuning import MAX_WORKERS_PER_CORE, cores, max_workers, tune
from imgvec.sources.local import LocalFolder, read_regular_file
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import CRASH_SIZE, HANG_SIZE, CrashingPreprocessor, HangingPreprocessor, encode, photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]
LATIN1 = b"caf\xe9 cr\xe8me.jpg"
SHIFT_JIS = b"\x83n\x83\x8d\x81[.jpg"  # "ハロー" in Shift-JIS
FOLDER = b"d\xe9j\xe0 vu"


def _mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _mount_namespaces(), reason="needs root and mount namespaces (as in CI)")


def in_namespace(script: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``script`` (sh) in a private mount namespace; ``imgvec`` there is this interpreter's CLI."""
    imgvec = f"{shlex.quote(sys.executable)} -m imgvec.cli"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script.replace("IMGVEC", imgvec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_photos(folder: Path, count: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"p{n}.jpg").write_bytes(encode(photo(seed + n, (96, 72))))


# -- names that are not UTF-8 -------------------------------------------------------------------------------


def test_names_that_are_not_utf8_are_indexed_synced_and_round_trip(tmp_path: Path, cli_env: dict[str, str]) -> None:
    root = tmp_path / "nas"
    odd_folder = os.path.join(os.fsencode(root), FOLDER)
    os.makedirs(odd_folder)
    files = [os.path.join(odd_folder, LATIN1), os.path.join(os.fsencode(root), SHIFT_JIS)]
    for n, path in enumerate(files):
        with open(path, "wb") as handle:
            handle.write(encode(photo(n)))
    (root / "plain.jpg").write_bytes(encode(photo(9)))

    dry = run_cli([*MODEL, "ingest", str(root), "--dry-run", "--json"], cli_env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["would_process"] == 3

    first = run_cli([*MODEL, "ingest", str(root), "--json"], cli_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["embedded"] == 3 and "Traceback" not in first.stderr

    store = EmbeddedStore(Path(cli_env["IMGVEC_STORE"]), "images")
    stored = dict(store.documents())
    for raw in files:
        doc_id = hashlib.sha1(raw).hexdigest()  # the id comes from the file system's bytes
        fields = stored[doc_id]
        assert "\\x" in fields["file_path"]  # readable text, the undecodable bytes escaped
        assert os.fsencode(fs_path(fields["file_path"])) == raw  # and back to the very same file
        assert document_id(fields["file_path"]) == doc_id

    again = run_cli([*MODEL, "ingest", str(root), "--json"], cli_env)
    assert json.loads(again.stdout)["unchanged"] == 3

    os.remove(files[0])
    synced = run_cli([*MODEL, "sync", str(root), "--json"], cli_env)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["deleted"] == 1
    assert hashlib.sha1(files[0]).hexdigest() not in dict(store.documents())


def test_watch_events_for_undecodable_names_become_the_same_text_and_item(tmp_path: Path) -> None:
    from watchdog.events import FileCreatedEvent

    raw = os.path.join(os.fsencode(tmp_path), LATIN1)
    with open(raw, "wb") as handle:
        handle.write(encode(photo(1)))
    tracker = ChangeTracker(to_text(str(tmp_path)), frozenset({"jpg"}), settle_seconds=0.0)
    tracker.dispatch(FileCreatedEvent(raw))  # watchdog hands over bytes or surrogates; both are the same text
    [change] = tracker.settled()
    item = LocalFolder(tmp_path).item(change.path)
    assert item is not None and item.file_path == change.path
    assert item.id == hashlib.sha1(raw).hexdigest()


def test_a_literal_backslash_x_name_still_reads_as_itself(tmp_path: Path) -> None:
    literal = tmp_path / "scan\\xe9.jpg"  # valid UTF-8 that happens to spell an escape
    literal.write_bytes(b"literal")
    assert to_text(str(literal)) == str(literal)
    assert fs_path(str(literal)) == str(literal)
    assert read_regular_file(str(literal)) == b"literal"


# -- what is not a regular file, and links out of the folder ------------------------------------------------


def test_fifos_sockets_and_device_links_are_one_record_each_and_never_block(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    root = tmp_path / "nas"
    write_photos(root, 2)
    os.mkfifo(root / "pipe.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket.png"))
    (root / "zero.jpg").symlink_to("/dev/zero")
    (root / "random.png").symlink_to("/dev/urandom")
    try:
        began = time.monotonic()
        run = run_cli([*MODEL, "ingest", str(root), "--json", "--follow-external"], cli_env, timeout=120)
        assert run.returncode == 3, run.stderr  # finished; what was not indexed is listed
        report = json.loads(run.stdout)
        assert report["embedded"] == 2
        reasons = {Path(f["file_path"]).name: f["reason"] for f in report["failures"]}
        assert set(reasons) == {"pipe.jpg", "socket.png", "zero.jpg", "random.png"}
        assert "FIFO" in reasons["pipe.jpg"] and "socket" in reasons["socket.png"]
        assert "character device" in reasons["zero.jpg"] and "character device" in reasons["random.png"]
        assert time.monotonic() - began < 100

        for name in ("pipe.jpg", "zero.jpg"):  # a read never blocks or runs past the file's size either
            with pytest.raises(OSError, match="not a regular file"):
                read_regular_file(str(root / name))
        query = run_cli([*MODEL, "search", "--image", str(root / "pipe.jpg")], cli_env, timeout=60)
        assert query.returncode == 1 and "not a regular file" in query.stderr
    finally:
        listener.close()


def test_links_out_of_the_folder_are_not_followed_unless_asked(tmp_path: Path, tiny_embedder) -> None:
    outside = tmp_path / "elsewhere"
    write_photos(outside, 3, seed=10)
    root = tmp_path / "nas"
    write_photos(root, 1)
    (root / "linked").symlink_to(outside)
    (root / "inside").symlink_to(root)  # a link back into the tree is fine (and entered once)
    journal = RunJournal(tmp_path / "state.sqlite")
    store = EmbeddedStore(tmp_path / "store", "images")
    options = PipelineOptions(workers=0, batch_size=4)

    kept_in = index_source(LocalFolder(root), store, tiny_embedder, options, journal=journal)
    assert kept_in.embedded == 1
    [failure] = kept_in.failures
    assert failure.stage == "list" and "outside" in failure.reason and "--follow-external" in failure.reason

    followed = index_source(LocalFolder(root, follow_external=True), store, tiny_embedder, options, journal=journal)
    assert followed.embedded == 3 and not followed.failures
    assert journal.failures() == []  # the complete listing got past it: the record went


def test_listing_failures_are_not_counted_as_processed_files(tmp_path: Path, tiny_embedder) -> None:
    root = tmp_path / "nas"
    write_photos(root, 3)
    os.mkfifo(root / "pipe.jpg")
    seen = []
    run = Indexer(
        LocalFolder(root),
        EmbeddedStore(tmp_path / "store", "images"),
        tiny_embedder,
        PipelineOptions(workers=0, batch_size=2),
        on_progress=seen.append,
    )
    report = run.run()
    assert report.failed == 1 and report.listing_failures == 1
    final = seen[-1]
    assert final.processed == final.total == 3  # was 4/3: the FIFO counted as a processed file


# -- images that cost more than they look -------------------------------------------------------------------


def test_a_tiny_gif_with_an_extreme_aspect_ratio_is_embedded_cheaply(tmp_path: Path, tiny_embedder) -> None:
    root = tmp_path / "nas"
    root.mkdir()
    Image.new("P", (1, 10_000), 3).save(root / "line.gif")
    Image.new("L", (59_530, 1), 200).save(root / "wide.gif")
    report = index_source(
        LocalFolder(root), EmbeddedStore(tmp_path / "store", "images"), tiny_embedder, PipelineOptions(workers=0)
    )
    assert report.embedded == 2 and not report.failures


def test_max_pixels_replaces_pillows_own_179_megapixel_limit() -> None:
    big = Image.new("1", (15_000, 12_000), 1)  # 180 MP, over Pillow's 2 x 89.5 MP bomb limit
    data = encode(big, "PNG")
    image = decode_image(data, reduce_for=224)  # default --max-pixels, 200 MP: accepted
    assert min(image.size) >= 448
    with pytest.raises(ImageDecodeError, match="over the limit of 100 MP; raise --max-pixels"):
        decode_image(data, max_pixels=100_000_000)


def test_a_file_far_larger_than_any_allowed_image_is_not_read(tmp_path: Path, tiny_embedder) -> None:
    root = tmp_path / "nas"
    write_photos(root, 1)
    with open(root / "huge.tif", "wb") as handle:  # sparse: no disk used
        handle.truncate(200 << 20)
    report = index_source(
        LocalFolder(root),
        EmbeddedStore(tmp_path / "store", "images"),
        tiny_embedder,
        PipelineOptions(workers=0, max_pixels=1_000_000),
    )
    [failure] = report.failures
    assert failure.stage == "decode" and "raise --max-pixels" in failure.reason


# -- workers: hung, dead, or never started ------------------------------------------------------------------


@pytest.mark.parametrize("io_concurrency", [0, 4], ids=["workers-read", "io-threads-read"])
def test_a_file_that_hangs_its_worker_fails_after_the_timeout_and_the_run_goes_on(
    tmp_path: Path, tiny_embedder, io_concurrency: int
) -> None:
    root = tmp_path / "nas"
    write_photos(root, 6)
    (root / "stuck.jpg").write_bytes(encode(photo(50, HANG_SIZE)))
    hanging = copy.copy(tiny_embedder)
    hanging.preprocessor = HangingPreprocessor(tiny_embedder.preprocessor)
    began = time.monotonic()
    report = index_source(
        LocalFolder(root),
        EmbeddedStore(tmp_path / "store", "images"),
        hanging,
        PipelineOptions(workers=1, batch_size=4, io_concurrency=io_concurrency, file_timeout=3),
    )
    assert report.embedded == 6
    [failure] = report.failures
    assert Path(failure.file_path).name == "stuck.jpg" and failure.stage == "worker" and "over 3s" in failure.reason
    assert time.monotonic() - began < 90


def test_a_worker_death_is_retried_by_the_next_run_not_skipped_forever(tmp_path: Path, tiny_embedder) -> None:
    root = tmp_path / "nas"
    write_photos(root, 3)
    (root / "crash-me.jpg").write_bytes(encode(photo(60, CRASH_SIZE)))
    journal = RunJournal(tmp_path / "state.sqlite")
    store = EmbeddedStore(tmp_path / "store", "images")
    crashing = copy.copy(tiny_embedder)
    crashing.preprocessor = CrashingPreprocessor(tiny_embedder.preprocessor)
    options = PipelineOptions(workers=1, batch_size=4, io_concurrency=0)
    first = index_source(LocalFolder(root), store, crashing, options, journal=journal)
    assert [f.stage for f in first.failures] == ["worker"]
    # the cause is gone (a worker killed from outside, memory freed): the next run tries it, no --retry-failed
    second = index_source(LocalFolder(root), store, tiny_embedder, options, journal=journal)
    assert second.embedded == 1 and second.known_failures == 0 and journal.failures() == []


def test_workers_that_die_on_every_file_are_a_set_up_error(tmp_path: Path, tiny_embedder) -> None:
    root = tmp_path / "nas"
    root.mkdir()
    for n in range(8):
        (root / f"c{n}.jpg").write_bytes(encode(photo(70 + n, CRASH_SIZE)))
    crashing = copy.copy(tiny_embedder)
    crashing.preprocessor = CrashingPreprocessor(tiny_embedder.preprocessor)
    with pytest.raises(DecodeWorkersError, match="died 4 times in a row without decoding a file"):
        index_source(
            LocalFolder(root),
            EmbeddedStore(tmp_path / "store", "images"),
            crashing,
            PipelineOptions(workers=1, batch_size=4, io_concurrency=0),
        )


@needs_mounts
def test_decode_workers_that_cannot_start_are_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    write_photos(tmp_path / "nas", 2)
    run = in_namespace(
        f"mount -t tmpfs -o ro,size=4k tmpfs /dev/shm && IMGVEC {' '.join(MODEL)} ingest {tmp_path / 'nas'} "
        "--workers 1",
        cli_env,
    )
    assert run.returncode == 1, run.stderr
    assert "decode workers cannot start (Read-only file system)" in run.stderr and "--workers 0" in run.stderr
    assert "Traceback" not in run.stderr


def test_workers_are_clamped_to_what_the_machine_can_run() -> None:
    from imgvec.embed.runtime import Precision, Runtime, RuntimeChoice

    assert max_workers(count=2, available=64 << 30) == 2 * MAX_WORKERS_PER_CORE
    assert max_workers(count=64, available=1 << 30) == 2  # memory binds first
    tuned = tune(RuntimeChoice(device="cpu", runtime=Runtime.TORCH, precision=Precision.FP32), workers=100_000)
    assert tuned.workers <= MAX_WORKERS_PER_CORE * cores()


# -- the store, the run state and the services around them --------------------------------------------------


@needs_mounts
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_written(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write_photos(tmp_path / "nas", 60)
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**cli_env, "IMGVEC_STORE": str(disk / "store")}
    run = in_namespace(
        f"mount -t tmpfs -o size=400k tmpfs {disk} && IMGVEC {' '.join(MODEL)} ingest {tmp_path / 'nas'} "
        "--batch-size 4 --workers 1; echo rc=$?; IMGVEC status --json",
        env,
    )
    lines = run.stderr.strip().splitlines()
    assert "rc=1" in run.stdout, run.stderr
    assert lines[-1].startswith("error: cannot write") and "No space left on device" in lines[-1], lines
    assert "run the same command again" in lines[-1] and "Traceback" not in run.stderr
    status = json.loads(run.stdout.split("rc=1", 1)[1])
    assert 0 < status["documents"] < 60  # the batches before the disk filled are there, intact


@needs_mounts
def test_a_read_only_store_can_be_read_and_refuses_writes_in_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    nas = tmp_path / "nas"
    write_photos(nas, 3)
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**cli_env, "IMGVEC_STORE": str(disk / "store")}
    model = " ".join(MODEL)
    run = in_namespace(
        f"mount -t tmpfs -o size=64m tmpfs {disk} && IMGVEC {model} ingest {nas} --workers 1 > /dev/null && "
        f"mount -o remount,ro {disk} && "
        "IMGVEC progress --json && echo ==== && IMGVEC failures --json && echo ==== && "
        f"IMGVEC {model} search 'a photo' -k 2 --json && echo ==== && IMGVEC {model} ingest {nas}; echo rc=$?",
        env,
    )
    progress, failures, hits, rest = run.stdout.split("====")
    assert json.loads(progress)["state"] == "finished" and json.loads(failures) == []
    assert len(json.loads(hits)) == 2
    assert "rc=1" in rest and "Traceback" not in run.stderr
    assert "cannot write the run state" in run.stderr and "make the store writable" in run.stderr


@pytest.fixture
def silent_endpoint() -> str:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_an_endpoint_that_never_answers_is_one_line_within_seconds(
    tmp_path: Path, cli_env: dict[str, str], silent_endpoint: str
) -> None:
    env = {**cli_env, "AWS_ACCESS_KEY_ID": "imgvec", "AWS_SECRET_ACCESS_KEY": "imgvec"}
    began = time.monotonic()
    status = run_cli(["--store", silent_endpoint, "status"], env, timeout=120)
    assert time.monotonic() - began < 45
    assert status.returncode == 1 and "did not answer" in status.stderr
    assert f"waiting for {silent_endpoint}" in status.stderr and "Traceback" not in status.stderr

    began = time.monotonic()
    ingest = run_cli([*MODEL, "--endpoint-url", silent_endpoint, "ingest", "s3://photos/2024/"], env, timeout=120)
    assert time.monotonic() - began < 45
    assert ingest.returncode == 1 and "did not answer within" in ingest.stderr and "Traceback" not in ingest.stderr


# -- words instead of noise ---------------------------------------------------------------------------------


def test_decoder_warnings_go_to_the_log_with_their_file(tmp_path: Path, cli_env: dict[str, str]) -> None:
    root = tmp_path / "nas"
    write_photos(root, 1)
    # An EXIF tag that points past the end of its block: Pillow warns, and the picture itself is fine.
    ifd = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010E, 2, 1000, 0x1000) + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + ifd
    (root / "exif.jpg").write_bytes(encode(photo(5), exif=exif))
    quiet = run_cli([*MODEL, "ingest", str(root), "--workers", "1"], cli_env)
    assert quiet.returncode == 0, quiet.stderr
    assert "Skipping tag" not in quiet.stderr

    (root / "exif2.jpg").write_bytes(encode(photo(6), exif=exif))  # a new file to decode
    verbose = run_cli(["-v", *MODEL, "ingest", str(root), "--workers", "1"], cli_env)
    [line] = [line for line in verbose.stderr.splitlines() if "Skipping tag" in line]
    assert line.startswith("INFO ") and str(root / "exif2.jpg") in line


def test_a_checkpoint_that_is_not_one_says_what_it_is(tmp_path: Path, settings) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"these are not weights\n" * 10)
    with pytest.raises(ModelLoadError, match=r"is not a PyTorch checkpoint .* expected a torch.save"):
        wiring.load_embedder(settings, f"imgvec-tiny/{garbage}")

    import torch

    foreign = tmp_path / "foreign.pt"
    torch.save({"layer.weight": torch.zeros(2)}, foreign)
    with pytest.raises(ModelLoadError, match=r"is not for imgvec-tiny: \d+ missing keys .* 1 unexpected keys"):
        wiring.load_embedder(settings, f"imgvec-tiny/{foreign}")


def test_an_ingest_through_an_alias_and_one_through_its_index_share_one_lock(tmp_path: Path, settings) -> None:
    from dataclasses import replace

    from imgvec import wiring
    from imgvec.errors import IndexBusyError
    from imgvec.stores.embedded_aliases import EmbeddedAliases

    store = tmp_path / "store"
    EmbeddedAliases(store).switch("photos", "photos-v2")
    by_alias = replace(settings, store=str(store), index="photos")
    by_index = replace(settings, store=str(store), index="photos-v2")
    assert wiring.lock_for(by_alias).path == wiring.lock_for(by_index).path
    holder = threading.Event()
    with wiring.lock_for(by_index):
        holder.set()
        with pytest.raises(IndexBusyError):
            wiring.refuse_if_busy(by_alias)

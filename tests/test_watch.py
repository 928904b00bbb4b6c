"""`imgvec watch` on a real folder: the real CLI in a subprocess, real inotify events, the tiny model.

Each scenario checks the index against the disk: every image file exactly once, with a vector, and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from watchdog.events import DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileOpenedEvent

from imgvec.cli.options import parse_duration
from imgvec.errors import StoreError
from imgvec.pipeline.continuous import recovery as recovery_module
from imgvec.pipeline.continuous.watch import ChangeTracker, Watcher, WatchOptions
from imgvec.pipeline.indexer import Indexer
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.local import LocalFolder
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import assert_children_exit, encode, photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]


# -- the tracker, on its own: events in, settled changes out ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock) -> ChangeTracker:
    return ChangeTracker("/photos", frozenset({"jpg", "png"}), settle_seconds=2.0, clock=clock)


def test_a_path_settles_only_after_a_quiet_spell() -> None:
    clock = Clock()
    changes = tracker(clock)
    changes.dispatch(FileCreatedEvent("/photos/a.jpg"))
    clock.now += 1.5
    changes.dispatch(FileClosedEvent("/photos/a.jpg"))  # still being written: the quiet spell starts again
    clock.now += 1.5
    assert changes.settled() == []
    clock.now += 0.6
    [change] = changes.settled()
    assert change.path == "/photos/a.jpg" and not change.is_dir and change.moved_from is None
    assert len(changes) == 0


def test_reads_and_non_images_are_not_changes() -> None:
    clock = Clock()
    changes = tracker(clock)
    changes.dispatch(FileOpenedEvent("/photos/a.jpg"))  # imgvec's own read of the file
    changes.dispatch(FileCreatedEvent("/photos/notes.txt"))
    assert len(changes) == 0


def test_moves_remember_the_first_origin_and_every_old_path() -> None:
    clock = Clock()
    changes = tracker(clock)
    changes.dispatch(FileMovedEvent("/photos/a.jpg", "/photos/b.jpg"))
    changes.dispatch(FileMovedEvent("/photos/b.jpg", "/photos/sub/c.jpg"))
    changes.dispatch(FileMovedEvent("/photos/.part", "/photos/d.jpg"))  # a finished download: just a new file
    changes.dispatch(FileMovedEvent("/photos/e.jpg", "/photos/e.jpg.bak"))  # now a non-image: its document goes
    changes.dispatch(DirMovedEvent("/photos/old", "/photos/new"))
    clock.now += 3
    settled = {c.path: c for c in changes.settled()}
    assert set(settled) == {"/photos/sub/c.jpg", "/photos/d.jpg", "/photos/e.jpg", "/photos/new"}
    assert settled["/photos/sub/c.jpg"].moved_from == "/photos/a.jpg"
    assert settled["/photos/sub/c.jpg"].also_delete == {"/photos/a.jpg", "/photos/b.jpg"}
    assert settled["/photos/d.jpg"].moved_from is None and not settled["/photos/d.jpg"].also_delete
    assert settled["/photos/new"].is_dir and settled["/photos/new"].moved_from == "/photos/old"


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("0.5s") == 0.5
    assert parse_duration("2d") == 172800
    for bad in ("", "1x", "h", "0s", "-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- the real command --------------------------------------------------------------------------------------


def write_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo(seed, size)))


def on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.jpg") if p.is_file()}


def indexed(env: dict[str, str]) -> list[tuple[str, bool, str | None]]:
    """(file_path, has vector, content hash) of every document."""
    store = EmbeddedStore(env["IMGVEC_STORE"], "images")
    if not store.exists():
        return []
    table = store._open().to_arrow()
    vectors = table.column("vector").is_valid().to_pylist()
    return list(
        zip(table.column("file_path").to_pylist(), vectors, table.column("content_hash").to_pylist(), strict=True)
    )


def index_matches(env: dict[str, str], root: Path) -> bool:
    rows = indexed(env)
    paths = [path for path, _, _ in rows]
    return len(paths) == len(set(paths)) and set(paths) == on_disk(root) and all(has for _, has, _ in rows)


def wait_for(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s")


def progress(env: dict[str, str]) -> dict:
    result = run_cli(["progress", "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def metric(env: dict[str, str], name: str) -> int:
    state = Path(env["IMGVEC_STORE"]) / "_imgvec" / "images.sqlite"
    from imgvec.pipeline.journal import RunJournal

    latest = RunJournal(state).latest()
    assert latest is not None
    return int(latest[1][name])


@pytest.fixture
def watcher(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    root = tmp_path / "photos"
    for i in range(3):
        write_photo(root / f"start{i}.jpg", 10 + i)
    process = start_watch(root, cli_env)
    try:
        yield root, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def start_watch(root: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    args = [*MODEL, "watch", str(root), "--settle", "0.5s", "--workers", "1", "--batch-size", "16", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def alive(process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the watcher exited ({process.returncode}): {process.stderr.read()}")  # type: ignore[union-attr]
    return True


def test_watch_follows_creates_overwrites_moves_deletes_slow_copies_and_a_burst(
    watcher: tuple[Path, subprocess.Popen[str]], cli_env: dict[str, str]
) -> None:
    root, process = watcher
    matches = lambda: alive(process) and index_matches(cli_env, root)  # noqa: E731
    wait_for(matches, what="the initial reconcile")
    wait_for(lambda: progress(cli_env)["health"]["last_reconcile_at"], what="the reconcile in the health")
    live = progress(cli_env)
    assert live["state"] == "running" and live["mode"] == "watch"
    assert live["health"]["source_available"] is True and live["health"]["observer"] == "inotify"

    # create, in the root and in a new subfolder
    for i in range(4):
        write_photo(root / f"new{i}.jpg", 20 + i)
    write_photo(root / "trip" / "day1" / "beach.jpg", 30)
    wait_for(matches, what="new files indexed")
    wait_for(lambda: progress(cli_env)["health"]["pending_changes"] == 0, what="an empty queue in the health")
    assert progress(cli_env)["health"]["last_change_at"]

    # overwrite: same path, new bytes → a new vector
    before = {path: digest for path, _, digest in indexed(cli_env)}
    target = root / "new0.jpg"
    write_photo(target, 99)
    wait_for(lambda: {p: d for p, _, d in indexed(cli_env)}[str(target)] != before[str(target)], what="overwrite")
    assert index_matches(cli_env, root)

    # rename in place, move into a subfolder, move a whole folder: vectors kept, nothing embedded again
    embedded_before = metric(cli_env, "images_embedded")
    (root / "new1.jpg").rename(root / "renamed.jpg")
    (root / "archive").mkdir()
    (root / "new2.jpg").rename(root / "archive" / "new2.jpg")
    (root / "trip").rename(root / "trips-2026")
    wait_for(matches, what="moves")
    wait_for(lambda: progress(cli_env)["moved"] + progress(cli_env)["cache_hits"] >= 3, what="moves counted")
    # A move into a folder created a moment earlier reaches inotify as a new file and a deletion (the new
    # folder's watch did not exist yet); the content cache still finds the vector. Other moves keep theirs.
    assert progress(cli_env)["moved"] >= 2
    assert metric(cli_env, "images_embedded") == embedded_before

    # delete a file and a folder
    (root / "renamed.jpg").unlink()
    shutil.rmtree(root / "trips-2026")
    wait_for(matches, what="deletes")
    assert progress(cli_env)["deleted"] >= 2

    # a file copied slowly (chunks closer together than the settle time) is embedded once, when complete
    embedded_before = metric(cli_env, "images_embedded")
    data = encode(photo(77, (400, 300)), quality=95)
    slow = root / "slow.jpg"
    with slow.open("wb") as handle:
        for start in range(0, len(data), len(data) // 8 + 1):
            handle.write(data[start : start + len(data) // 8 + 1])
            handle.flush()
            time.sleep(0.3)
    wait_for(matches, what="the slow copy")
    time.sleep(1.5)  # nothing more may follow
    assert metric(cli_env, "images_embedded") == embedded_before + 1
    assert json.loads(run_cli(["failures", "--json"], cli_env).stdout) == []

    # a burst of 500 new files
    burst = root / "burst"
    staging = root.parent / "staging"
    for i in range(500):
        write_photo(staging / f"b{i:03d}.jpg", 1000 + i, (32, 24))
    staging.rename(burst)  # moved in from outside the tree: a folder of files nobody has seen
    (burst / "b000.jpg").unlink()
    write_photo(burst / "extra.jpg", 5000)
    wait_for(matches, timeout=240, what="the burst of 500 files")
    assert len(indexed(cli_env)) == len(on_disk(root))

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped:" in stderr
    final = progress(cli_env)
    assert final["state"] == "finished" and final["mode"] == "watch"


def test_a_vanished_folder_deletes_nothing_and_is_caught_up_when_back(
    watcher: tuple[Path, subprocess.Popen[str]], cli_env: dict[str, str]
) -> None:
    """A NAS share going away and coming back, as a folder renamed away and back (no mount needed)."""
    root, process = watcher
    wait_for(lambda: alive(process) and index_matches(cli_env, root), what="the initial reconcile")
    away = root.parent / "away"
    root.rename(away)
    wait_for(lambda: progress(cli_env)["health"]["source_available"] is False, what="unavailable")
    (away / "start0.jpg").unlink()  # changed while nobody could see it
    write_photo(away / "while-away.jpg", 40)
    time.sleep(1.0)
    assert len(indexed(cli_env)) == 3  # nothing deleted while the folder was gone
    away.rename(root)
    wait_for(lambda: alive(process) and index_matches(cli_env, root), what="the catch-up after the return")
    wait_for(lambda: progress(cli_env)["health"]["source_available"] is True, what="available in the health")
    write_photo(root / "after.jpg", 41)  # and the watch works again
    wait_for(lambda: index_matches(cli_env, root), what="a change after the return")

    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers  # the decode worker
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert_children_exit(workers)
    assert progress(cli_env)["state"] == "interrupted"  # a killed service never reads as running


def can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path("/tmp") / f"imgvec-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(probe)], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root (CAP_SYS_ADMIN)")
def test_a_real_unmount_and_remount(tmp_path: Path, cli_env: dict[str, str]) -> None:
    share = tmp_path / "share"
    share.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(share)], check=True)
    process = None
    try:
        for i in range(4):
            write_photo(share / f"p{i}.jpg", 60 + i)
        backup = tmp_path / "backup"
        shutil.copytree(share, backup)
        process = start_watch(share, cli_env)
        wait_for(lambda: alive(process) and index_matches(cli_env, share), what="the initial reconcile")
        subprocess.run(["umount", str(share)], check=True)  # the mount point stays, empty
        wait_for(lambda: progress(cli_env)["health"]["source_available"] is False, what="unavailable")
        time.sleep(1.0)
        assert len(indexed(cli_env)) == 4  # an empty mount point is not "every file deleted"
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(share)], check=True)
        for path in list(backup.iterdir())[1:]:
            shutil.copy2(path, share / path.name)
        wait_for(lambda: alive(process) and index_matches(cli_env, share), what="the catch-up after the remount")
        assert len(indexed(cli_env)) == 3
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        subprocess.run(["umount", str(share)], capture_output=True)


def test_polling_follows_a_share_without_inotify(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """--polling: what NFS/SMB shares changed by other machines need (no events reach this machine)."""
    root = tmp_path / "share"
    write_photo(root / "a.jpg", 70)
    write_photo(root / "b.jpg", 71)
    process = start_watch(root, cli_env, "--polling", "--poll-interval", "0.5s")
    try:
        matches = lambda: alive(process) and index_matches(cli_env, root)  # noqa: E731
        wait_for(matches, what="the initial reconcile")
        write_photo(root / "sub" / "c.jpg", 72)
        (root / "a.jpg").rename(root / "a-renamed.jpg")
        (root / "b.jpg").unlink()
        wait_for(matches, what="changes seen by polling")
        assert progress(cli_env)["health"]["observer"] == "polling"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0


def test_reconcile_every_catches_what_no_event_reported(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """With a poll far in the future no event arrives at all: only the scheduled pass can see these changes."""
    root = tmp_path / "share"
    write_photo(root / "a.jpg", 80)
    write_photo(root / "b.jpg", 81)
    process = start_watch(root, cli_env, "--polling", "--poll-interval", "1h", "--reconcile-every", "2s")
    try:
        matches = lambda: alive(process) and index_matches(cli_env, root)  # noqa: E731
        wait_for(matches, what="the initial reconcile")
        first = progress(cli_env)["health"]["last_reconcile_at"]
        write_photo(root / "c.jpg", 82)
        (root / "a.jpg").unlink()
        wait_for(matches, what="the scheduled reconcile")
        assert progress(cli_env)["health"]["last_reconcile_at"] >= first
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0


class FlakyStore:
    """The real embedded store, failing every look-up while ``down`` is set: a cluster or a share gone for a while."""

    def __init__(self, inner: EmbeddedStore) -> None:
        self.inner = inner
        self.down = False

    def lookup(self, ids):
        if self.down:
            raise StoreError("cluster unreachable (test)")
        return self.inner.lookup(ids)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_store_outage_is_logged_retried_and_caught_up(tmp_path: Path, tiny_embedder, monkeypatch) -> None:
    monkeypatch.setattr(recovery_module, "ERROR_BACKOFF_SECONDS", 0.2)
    root = tmp_path / "photos"
    write_photo(root / "a.jpg", 90)
    folder = LocalFolder(root)
    store = FlakyStore(EmbeddedStore(tmp_path / "store", "images"))
    run = Indexer(folder, store, tiny_embedder, PipelineOptions(workers=0))
    lines: list[str] = []
    watcher = Watcher(folder, run, WatchOptions(settle_seconds=0.3), log=lines.append)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    env = {"IMGVEC_STORE": str(tmp_path / "store")}
    health = lambda: watcher.indexer.progress.health or {}  # noqa: E731
    try:
        wait_for(lambda: index_matches(env, root), what="the initial reconcile")
        store.down = True
        write_photo(root / "b.jpg", 91)
        wait_for(lambda: sum("error: StoreError" in line for line in lines) >= 2, what="logged retries")
        assert thread.is_alive() and health()["errors_in_a_row"] >= 2
        store.down = False
        wait_for(
            lambda: index_matches(env, root) and "recovered" in lines and not health()["errors_in_a_row"],
            what="the catch-up after the outage",
        )
        assert health()["last_error"] == "StoreError: cluster unreachable (test)"
    finally:
        watcher.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()

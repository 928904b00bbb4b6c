"""`imgvec sync`: one reconcile pass over a folder (the real CLI) leaves the index matching the files exactly,
and refuses deletions that look like an unmounted share. The S3 pass is in tests/test_s3.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from imgvec.documents import Failure, ImageDocument, SourceItem
from imgvec.pipeline.sync import ListingRecord
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import encode, photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]


def write_photo(path: Path, seed: int, size: tuple[int, int] = (48, 36)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo(seed, size)))


def indexed(env: dict[str, str]) -> list[str]:
    table = EmbeddedStore(env["IMGVEC_STORE"], "images")._open().to_arrow()
    assert all(table.column("vector").is_valid().to_pylist())
    return table.column("file_path").to_pylist()


def matches(env: dict[str, str], root: Path, *extra: str) -> bool:
    paths = indexed(env)
    expected = {str(p) for p in root.rglob("*.jpg")} | set(extra)
    return len(paths) == len(set(paths)) and set(paths) == expected


def sync(env: dict[str, str], root: Path, *flags: str) -> tuple[int, dict]:
    result = run_cli([*MODEL, "sync", str(root), "--workers", "0", "--json", *flags], env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def test_sync_adds_reembeds_moves_and_deletes_to_match_the_folder(tmp_path: Path, cli_env: dict[str, str]) -> None:
    root = tmp_path / "photos"
    for i in range(8):
        write_photo(root / f"a{i}.jpg", i)
    write_photo(root / "old" / "x.jpg", 50)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    code, first = sync(cli_env, root)
    assert code == 3 and first["embedded"] == 9 and first["sync"]["deleted"] == 0  # broken.jpg: a failure

    write_photo(root / "new.jpg", 100)  # added
    write_photo(root / "a0.jpg", 101)  # changed
    (root / "a1.jpg").rename(root / "moved.jpg")  # moved: same bytes, found in the content cache
    (root / "a2.jpg").unlink()  # deleted
    shutil.rmtree(root / "old")  # a folder deleted
    (root / "broken.jpg").unlink()  # a failed file deleted: its failure record goes too

    dry_code, plan = sync(cli_env, root, "--dry-run")
    assert dry_code == 0 and plan["sync"]["stale"] == 3 and plan["would_process"] == 3
    assert not matches(cli_env, root)  # the dry run wrote nothing

    code, report = sync(cli_env, root)
    assert code == 0, report
    assert report["embedded"] == 2 and report["cache_hits"] == 1 and report["unchanged"] == 5
    assert report["sync"] == {"in_scope": 11, "stale": 3, "deleted": 3, "refused": None}
    assert matches(cli_env, root)
    assert json.loads(run_cli(["failures", "--json"], cli_env).stdout) == []
    progress = json.loads(run_cli(["progress", "--json"], cli_env).stdout)
    assert progress["state"] == "finished" and progress["deleted"] == 3

    code, again = sync(cli_env, root)  # nothing left to do
    assert code == 0 and again["embedded"] == again["sync"]["deleted"] == 0 and again["unchanged"] == 8


def test_an_empty_listing_or_a_mass_deletion_is_refused(tmp_path: Path, cli_env: dict[str, str]) -> None:
    root = tmp_path / "share"
    for i in range(120):
        write_photo(root / f"p{i:03d}.jpg", 200 + i, (24, 18))
    assert sync(cli_env, root)[0] == 0

    hidden = tmp_path / "hidden"
    root.rename(hidden)
    root.mkdir()  # what an unmounted share leaves behind: an empty mount point
    code, report = sync(cli_env, root)
    assert code == 1 and report["sync"]["deleted"] == 0 and "is it mounted" in report["sync"]["refused"]
    assert len(indexed(cli_env)) == 120

    root.rmdir()
    hidden.rename(root)
    for path in sorted(root.iterdir())[:100]:
        path.unlink()
    code, report = sync(cli_env, root)
    assert code == 1 and report["sync"]["stale"] == 100 and report["sync"]["deleted"] == 0
    assert "--max-delete" in report["sync"]["refused"] and len(indexed(cli_env)) == 120

    code, report = sync(cli_env, root, "--max-delete", "90")
    assert code == 0 and report["sync"]["deleted"] == 100
    assert matches(cli_env, root)


def test_documents_imgvec_did_not_write_are_left_alone(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A document the file-index worker wrote (its own id) under the folder is the worker's to delete."""
    root = tmp_path / "photos"
    write_photo(root / "a.jpg", 1)
    assert sync(cli_env, root)[0] == 0
    store = EmbeddedStore(cli_env["IMGVEC_STORE"], "images")
    gone = str(root / "worker-wrote-this.jpg")
    store.upsert([ImageDocument(SourceItem.of_path(gone, 10, 0.0, doc_id="worker-42"), np.ones(512))])
    code, report = sync(cli_env, root)
    assert code == 0 and report["sync"]["deleted"] == 0 and report["sync"]["in_scope"] == 1
    assert matches(cli_env, root, gone)


def test_nothing_is_deleted_under_a_folder_the_listing_could_not_read() -> None:
    record = ListingRecord()
    try:
        items = [SourceItem(f"/p/ok/{i}.jpg", f"/p/ok/{i}.jpg", f"{i}.jpg", "jpg", 1, 0.0) for i in range(3)]
        assert [i.uri for i in record.record(items)] == [i.uri for i in items] and record.complete
        record.on_error(Failure.listing("/p/locked", "cannot list folder: Permission denied"))
        assert record.unseen(["/p/ok/1.jpg", "/p/ok/9.jpg"]) == {"/p/ok/9.jpg"}
        assert not record.readable("/p/locked/a.jpg") and not record.readable("/p/locked")
        assert record.readable("/p/locked-not/a.jpg") and record.readable("/p/ok/9.jpg")
    finally:
        record.close()


def test_sync_of_a_missing_folder_is_a_clear_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli([*MODEL, "sync", str(tmp_path / "nowhere")], cli_env)
    assert result.returncode == 1 and "does not exist" in result.stderr

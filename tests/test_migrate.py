"""Index management on the embedded store, through the real CLI: create, verify, fill missing vectors, migrate from
a 1024-dim index with an alias switch, resume, and roll back."""

from __future__ import annotations

import json
from pathlib import Path

from imgvec.documents import ImageDocument, SourceItem
from imgvec.identity import IndexIdentity
from imgvec.stores.embedded import EmbeddedStore
from imgvec.stores.embedded_aliases import EmbeddedAliases
from tests.helpers import photo, run_cli

MODEL = ["--model", "imgvec-tiny/random"]
OLD = IndexIdentity("old-1024/random", "old-1024", "random", 1024)


def worker_documents(store_dir: Path, index: str, identity: IndexIdentity, folder: Path) -> list[Path]:
    """What the file-index worker left: one document per file, almost none with a vector."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range(5):
        path = folder / f"photo{n}.jpg"
        photo(n).save(path)
        files.append(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    files.append(broken)
    store = EmbeddedStore(store_dir, index)
    store.ensure_index(identity)
    docs = [ImageDocument(SourceItem.of_path(str(p), p.stat().st_size, 0.0)) for p in files]
    if identity.dimension == 1024:  # a couple of the old sample vectors
        docs[0].vector = [1.0] * 1024
        docs[0].model = identity.model
    store.upsert(docs)
    return files


def test_index_create_refuses_a_dimension_the_model_does_not_produce(cli_env):
    refused = run_cli([*MODEL, "index", "create", "v3", "--dimension", "1024"], cli_env)
    assert refused.returncode == 1
    assert "1024" in refused.stderr and "512" in refused.stderr
    created = run_cli([*MODEL, "index", "create", "v3", "--dimension", "512"], cli_env)
    assert created.returncode == 0, created.stderr
    again = run_cli([*MODEL, "index", "create", "v3"], cli_env)
    assert again.returncode == 1 and "already exists" in again.stderr
    verified = run_cli([*MODEL, "index", "verify", "v3", "--json"], cli_env)
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["dimension"] == 512 and report["model"] == "imgvec-tiny/random"


def test_ingest_missing_fills_documents_in_place(cli_env, tmp_path: Path):
    store_dir = Path(cli_env["IMGVEC_STORE"])
    created = run_cli([*MODEL, "index", "create", "photos"], cli_env)
    assert created.returncode == 0, created.stderr
    identity = EmbeddedStore(store_dir, "photos").identity()
    files = worker_documents(store_dir, "photos", identity, tmp_path / "nas")
    ids_before = {i for i, _ in EmbeddedStore(store_dir, "photos").documents()}

    filled = run_cli(["--index", "photos", "ingest", "--missing", "--workers", "0", "--json"], cli_env)
    assert filled.returncode == 3, filled.stderr  # one file is broken: recorded, the rest are filled
    report = json.loads(filled.stdout)
    assert report["embedded"] == 5 and [f["file_path"] for f in report["failures"]] == [str(files[-1])]
    store = EmbeddedStore(store_dir, "photos")
    assert {i for i, _ in store.documents()} == ids_before  # same documents, now with vectors: no new ones
    assert [fields["file_path"] for _, fields in store.documents(unfinished=True)] == [str(files[-1])]

    both = run_cli(["--index", "photos", "ingest", str(tmp_path), "--missing"], cli_env)
    assert both.returncode == 2 and "not both" in both.stderr


def test_migrate_switches_the_alias_resumes_and_rolls_back(cli_env, tmp_path: Path):
    store_dir = Path(cli_env["IMGVEC_STORE"])
    files = worker_documents(store_dir, "file-index-v2-knn", OLD, tmp_path / "nas")

    old_check = run_cli([*MODEL, "index", "verify", "file-index-v2-knn"], cli_env)
    assert old_check.returncode == 1 and "1024" in old_check.stdout

    args = [*MODEL, "migrate", "--from", "file-index-v2-knn", "--to", "file-index-v3-knn-512"]
    args += ["--alias", "file-index-current", "--workers", "0", "--json"]
    migrated = run_cli(args, cli_env)
    assert migrated.returncode == 0, migrated.stderr
    report = json.loads(migrated.stdout)
    assert report["switched"] and report["copied"] == 6 and report["failed"] == 1
    assert report["target"]["documents"] == 6 and report["target"]["with_vector"] == 5
    assert EmbeddedAliases(store_dir).target("file-index-current") == "file-index-v3-knn-512"

    status = json.loads(run_cli(["--index", "file-index-current", "status", "--json"], cli_env).stdout)
    assert status["dimension"] == 512 and status["with_vector"] == 5 and status["model"] == "imgvec-tiny/random"
    found = run_cli(["--index", "file-index-current", "search", "--image", str(files[2]), "-k", "1", "--json"], cli_env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["file_path"] == str(files[2])
    # the old index is untouched, its 1024-dim sample vector included
    assert EmbeddedStore(store_dir, "file-index-v2-knn").stats().with_vector == 1

    resumed = run_cli(args, cli_env)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(resumed.stdout)
    assert again["copied"] == 0 and again["target"]["with_vector"] == 5 and again["failed"] == 1

    shown = run_cli(["alias", "show", "file-index-current"], cli_env)
    assert "file-index-v3-knn-512" in shown.stdout and "migrated from file-index-v2-knn" in shown.stdout
    rolled = run_cli(["alias", "rollback", "file-index-current"], cli_env)
    assert rolled.returncode == 0, rolled.stderr
    assert EmbeddedAliases(store_dir).target("file-index-current") == "file-index-v2-knn"
    nothing = run_cli(["alias", "rollback", "file-index-current"], cli_env)
    assert nothing.returncode == 1 and "nothing to roll back" in nothing.stderr


def test_migrate_refuses_to_switch_when_vectors_are_missing_without_a_reason(tiny_embedder, tmp_path: Path):
    from imgvec.errors import MigrationError
    from imgvec.pipeline.migrate import migrate
    from imgvec.pipeline.report import RunReport

    worker_documents(tmp_path, "old", OLD, tmp_path / "nas")
    source, target = EmbeddedStore(tmp_path, "old"), EmbeddedStore(tmp_path, "new")
    aliases = EmbeddedAliases(tmp_path)
    try:
        migrate(source, target, aliases, alias="current", identity=tiny_embedder.identity, fill=lambda: RunReport())
    except MigrationError as error:
        assert "6 documents have no vector but only 0 are recorded" in str(error)
    else:
        raise AssertionError("the alias moved to an index without vectors")
    assert aliases.target("current") is None


def test_migrate_from_the_alias_itself_records_the_index_and_rolls_back(cli_env, tmp_path: Path):
    """`migrate --from current --alias current`: the alias is resolved to the index it names, so the new index
    records that index, and a rollback returns to it (it recorded 'current' and the rollback was a traceback)."""
    store_dir = Path(cli_env["IMGVEC_STORE"])
    worker_documents(store_dir, "v4", OLD, tmp_path / "nas")
    EmbeddedAliases(store_dir).switch("current", "v4")
    args = [*MODEL, "migrate", "--from", "current", "--to", "v5", "--alias", "current", "--workers", "0"]
    migrated = run_cli(args, cli_env)
    assert migrated.returncode == 0, migrated.stderr
    assert "'current' is an alias of 'v4'" in migrated.stderr and "the old index 'v4' is kept" in migrated.stdout
    assert run_cli(["alias", "show", "current"], cli_env).stdout.strip() == "current → v5 (migrated from v4)"
    rolled = run_cli(["alias", "rollback", "current"], cli_env)
    assert rolled.returncode == 0, rolled.stderr
    assert EmbeddedAliases(store_dir).target("current") == "v4"


def test_a_rollback_to_an_origin_recorded_as_an_alias_is_one_line(tiny_embedder, tmp_path: Path):
    from imgvec.errors import StoreError
    from imgvec.pipeline.migrate import rollback

    aliases = EmbeddedAliases(tmp_path)
    EmbeddedStore(tmp_path, "v4").ensure_index(OLD)
    EmbeddedStore(tmp_path, "v5").ensure_index(tiny_embedder.identity, migrated_from="current")  # as before the fix
    aliases.switch("current", "v5")
    try:
        rollback(aliases, "current", lambda name: EmbeddedStore(tmp_path, name))
    except StoreError as error:
        assert "recorded as migrated from 'current', which is an alias (of 'v5')" in str(error)
    else:
        raise AssertionError("rolled back to an alias")
    assert aliases.target("current") == "v5"

"""Duplicates: the pair searches against all pairs, what a picture says about itself, and `imgvec duplicates`, its
API and its page on a real folder: copies, re-saves, resizes, crops and EXIF-dated versions, each group with the
keeper a person would choose. Pictures stored before the fields existed are filled in by the next run; `watch`
keeps the groups current.

Sizes crossed: the candidate step of the hash search, the exact-search limit, partitions and blocks of the vector
search (each made small here and crossed many times), the page of 20 groups (45 groups: three pages), and the
embedded store's id ranges of a scan.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imgvec.duplicates import pairs as pair_search
from imgvec.duplicates.components import components
from imgvec.duplicates.pairs import chunking, hash_pairs, vector_pairs
from imgvec.embed.decode import open_image
from imgvec.embed.picture import Header
from tests.helpers import Service, encode, exif_photo, run_cli, textured_photo

ORIGINALS = 45
"""Each with a half-size copy: 45 resaved groups, more than two pages of 20."""


def union_find(rows: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    parent = list(range(rows))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([root(x) for x in range(rows)])


# -- the searches ---------------------------------------------------------------------------------------------------


def test_components_are_those_of_union_find() -> None:
    rng = np.random.default_rng(0)
    for edges in (0, 1, 50, 800, 5000):
        a, b = rng.integers(0, 2000, edges), rng.integers(0, 2000, edges)
        assert np.array_equal(components(2000, a, b), union_find(2000, a, b))


@pytest.mark.parametrize("threshold", [0, 3, 8, 12])
def test_hash_pairs_make_the_groups_that_all_pairs_make(threshold: int, monkeypatch) -> None:
    monkeypatch.setattr(pair_search, "CANDIDATES_PER_STEP", 300)  # crossed many times per probe
    rng = np.random.default_rng(threshold)
    hashes = rng.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64)
    bits = hashes.view(np.uint64)
    for first in range(0, 600, 2):  # planted: a hash and the same with up to 12 bits flipped
        flips = rng.choice(64, rng.integers(1, 13), replace=False)
        bits[first + 1] = bits[first] ^ np.uint64(sum(1 << int(f) for f in flips))
    bits[2000:2400] = bits[7]  # a dense bucket: 400 copies of one hash
    a, b, score = hash_pairs(hashes, threshold)
    distances = np.bitwise_count(bits[:, None] ^ bits[None, :])
    i, j = np.nonzero(np.triu(distances <= threshold, 1))
    assert np.array_equal(components(3000, a, b), union_find(3000, i, j))
    assert np.all(score == np.bitwise_count(bits[a] ^ bits[b])) and np.all(score <= threshold) and np.all(a < b)


def test_chunking_keeps_tables_small_and_probes_few() -> None:
    for rows in (10, 10_000, 1_000_000):
        for threshold in (0, 8, 16):
            widths = chunking(rows, threshold)
            assert sum(widths) == 64 and max(widths) <= pair_search.MAX_TABLE_BITS


def clustered(rows: int, planted: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, rows)] + rng.standard_normal((rows, 64)).astype(np.float32)
    sources = rng.choice(rows, planted, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(rows), sources), planted, replace=False)
    vectors[targets] = vectors[sources] + 0.05 * rng.standard_normal((planted, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, {(min(s, t), max(s, t)) for s, t in zip(sources.tolist(), targets.tolist(), strict=True)}


def test_vector_pairs_in_partitions_find_what_all_pairs_find(monkeypatch) -> None:
    vectors, planted = clustered(4000, 150, seed=1)
    everything = vectors @ vectors.T
    i, j = np.nonzero(np.triu(everything >= 0.95, 1))
    truth = set(zip(i.tolist(), j.tolist(), strict=True))
    assert planted <= truth

    exact = vector_pairs(vectors, 0.95)  # 4,000 rows: below the exact-search limit, every pair compared
    assert set(zip(exact[0].tolist(), exact[1].tolist(), strict=True)) == truth

    monkeypatch.setattr(pair_search, "EXACT_MAX_ROWS", 500)
    monkeypatch.setattr(pair_search, "ROWS_PER_PARTITION", 100)  # 40 partitions
    monkeypatch.setattr(pair_search, "BLOCK_ROWS", 64)  # blocks of queries crossed in every partition
    a, b, score = vector_pairs(vectors, 0.95)
    found = set(zip(a.tolist(), b.tolist(), strict=True))
    assert found <= truth and len(found) == len(a)  # never a pair below the threshold, each pair once
    assert len(found) >= 0.99 * len(truth)
    assert np.allclose(score, everything[a, b], atol=1e-5)


# -- what a picture says about itself ---------------------------------------------------------------------------


def exif_jpeg(size: tuple[int, int], *, orientation: int | None = None, taken: str | None = None, offset=None) -> bytes:
    return exif_photo(1, size=size, orientation=orientation, taken=taken, offset=offset)


def test_the_header_gives_the_upright_size_and_the_capture_time() -> None:
    turned = Header(open_image(exif_jpeg((300, 200), orientation=6, taken="2019:07:14 18:30:05", offset="+02:00")))
    assert (turned.width, turned.height) == (200, 300)  # portrait: EXIF turns it a quarter
    assert turned.taken_at == datetime(2019, 7, 14, 16, 30, 5, tzinfo=UTC)
    west = Header(open_image(exif_jpeg((300, 200), taken="2019:07:14 18:30:05", offset="-05:30")))
    assert west.taken_at == datetime(2019, 7, 15, 0, 0, 5, tzinfo=UTC)
    wall = Header(open_image(exif_jpeg((300, 200), orientation=1, taken="2020:01:02 03:04:05")))
    assert (wall.width, wall.height, wall.taken_at) == (300, 200, datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert Header(open_image(exif_jpeg((300, 200), taken="0000:00:00 00:00:00"))).taken_at is None  # clock unset
    assert Header(open_image(exif_jpeg((300, 200), taken="not a date"))).taken_at is None
    plain = Header(open_image(encode(textured_photo(2, (64, 48)), "PNG")))
    assert (plain.width, plain.height, plain.taken_at) == (64, 48, None)  # no EXIF: fine, and never the mtime
    picture = turned.picture(Image.open(io.BytesIO(exif_jpeg((300, 200)))).convert("RGB"))
    assert -(2**63) <= picture.perceptual_hash < 2**63 and picture.pixels == 60_000


# -- a real folder through the CLI, the API and the page -----------------------------------------------------------


@pytest.fixture(scope="module")
def collection(module_env: dict[str, str]) -> Path:
    """45 originals, each with a half-size copy; original 0 also byte-identical twice, a 5 % crop and a PNG; two
    versions of original 1 with capture times; a photo that has no twin."""
    root = Path(module_env["IMGVEC_STORE"]).parent / "photos"
    for folder in ("albums/2024/summer", "shared", "copies", "edits"):
        (root / folder).mkdir(parents=True)
    for n in range(ORIGINALS):
        image = textured_photo(100 + n, (640, 480))
        (root / "albums/2024/summer" / f"img{n:02d}.jpg").write_bytes(encode(image, "JPEG", quality=92))
        (root / "shared" / f"img{n:02d}-small.jpg").write_bytes(encode(image.resize((320, 240)), "JPEG", quality=70))
    original = root / "albums/2024/summer/img00.jpg"
    shutil.copy(original, root / "copies/img00.jpg")
    shutil.copy(original, root / "copies/img00 (1).jpg")
    image = textured_photo(100, (640, 480))
    (root / "edits/img00-crop.jpg").write_bytes(encode(image.crop((16, 12, 624, 468)), "JPEG", quality=85))
    (root / "edits/img00.png").write_bytes(encode(image, "PNG", compress_level=1))
    second = textured_photo(101, (640, 480))
    versions = (("later.jpg", "2021:05:01 10:00:00", 95), ("first-of-the-day.jpg", "2019:05:01 09:00:00", 80))
    for name, taken, quality in versions:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = taken
        (root / "edits" / name).write_bytes(encode(second, "JPEG", quality=quality, exif=exif.tobytes()))
    (root / "edits/alone.jpg").write_bytes(encode(textured_photo(999, (640, 480)), "JPEG"))
    ingested = run_cli(["ingest", str(root)], module_env)
    assert ingested.returncode == 0, ingested.stderr
    return root


def duplicates(env: dict[str, str], *args: str) -> dict:
    shown = run_cli(["duplicates", "--json", *args], env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def paths(group: dict) -> list[str]:
    return [member["file_path"] for member in group["members"]]


def test_resaved_groups_with_their_keepers_largest_saving_first(collection: Path, module_env) -> None:
    found = duplicates(module_env)
    files = 2 * ORIGINALS + 7
    assert (found["kind"], found["threshold"], found["documents"], found["unhashed"]) == ("resaved", 8, files, 0)
    groups = found["groups"]
    assert found["groups_total"] == len(groups) == ORIGINALS  # every original and its copies; "alone" in none
    assert all(str(collection / "edits/alone.jpg") not in paths(group) for group in groups)
    savings = [group["saving"] for group in groups]
    assert savings == sorted(savings, reverse=True) and found["saving_total"] == sum(savings)

    first = groups[0]  # original 0: two byte copies, a PNG, a crop and a small copy free the most
    assert sorted(paths(first)) == sorted(
        str(collection / p)
        for p in (
            "albums/2024/summer/img00.jpg",
            "copies/img00.jpg",
            "copies/img00 (1).jpg",
            "edits/img00.png",
            "edits/img00-crop.jpg",
            "shared/img00-small.jpg",
        )
    )
    keeper = first["members"][0]
    # the most pixels first (the PNG and the JPEGs are 640x480; the crop and the small copy are not), then no capture
    # time to tell them apart, then the shortest path
    assert keeper["id"] == first["keep"] and keeper["file_path"] == str(collection / "edits/img00.png")
    assert (keeper["width"], keeper["height"], keeper["score"]) == (640, 480, None)
    assert all(0 <= member["score"] <= 8 for member in first["members"][1:])
    assert first["saving"] == sum(m["file_size"] for m in first["members"]) - keeper["file_size"]

    dated = next(group for group in groups if str(collection / "edits/later.jpg") in paths(group))
    # three of 640x480: the earliest capture wins over a shorter path and a larger file
    assert dated["members"][0]["file_path"] == str(collection / "edits/first-of-the-day.jpg")
    assert dated["members"][0]["taken_at"] == "2019-05-01T09:00:00+00:00"
    assert dated["members"][1]["file_path"] == str(collection / "edits/later.jpg")
    assert paths(dated)[-1] == str(collection / "shared/img01-small.jpg")  # fewest pixels last


def test_exact_similar_prefix_and_threshold(collection: Path, module_env) -> None:
    exact = duplicates(module_env, "--kind", "exact")
    assert exact["groups_total"] == 1 and exact["threshold"] is None
    assert sorted(paths(exact["groups"][0])) == sorted(
        str(collection / p) for p in ("albums/2024/summer/img00.jpg", "copies/img00.jpg", "copies/img00 (1).jpg")
    )
    assert exact["groups"][0]["saving"] == 2 * (collection / "copies/img00.jpg").stat().st_size

    under = duplicates(module_env, "--path-prefix", str(collection / "edits") + "/")
    assert under["documents"] == 5 and under["groups_total"] == 2  # the crop and the PNG; the two dated versions

    strict = duplicates(module_env, "--threshold", "0")
    assert strict["groups_total"] < ORIGINALS and all(
        m["score"] in (None, 0) for group in strict["groups"] for m in group["members"]
    )

    similar = run_cli(["duplicates", "--kind", "similar", "--limit", "2"], module_env)
    assert similar.returncode == 0, similar.stderr
    assert "random weights" in similar.stdout and "groups of similar duplicates" in similar.stdout.splitlines()[0]

    for args, said in (
        (["--kind", "exact", "--threshold", "3"], "does not apply to exact"),
        (["--threshold", "2.5"], "whole number"),
        (["--kind", "similar", "--threshold", "1.5"], "cosine"),
        (["--kind", "nearby"], "unknown kind"),
    ):
        refused = run_cli(["duplicates", *args], module_env)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    searched = run_cli(["search", "a photo", "-k", "200", "--json"], module_env)  # the new fields print as JSON too
    assert searched.returncode == 0, searched.stderr
    dated = {hit["file_path"]: hit["taken_at"] for hit in json.loads(searched.stdout) if hit["taken_at"]}
    assert dated == {
        str(collection / "edits/later.jpg"): "2021-05-01T10:00:00+00:00",
        str(collection / "edits/first-of-the-day.jpg"): "2019-05-01T09:00:00+00:00",
    }

    text = run_cli(["duplicates", "--limit", "3"], module_env).stdout
    assert "keep" in text and "640x480" in text and f"{ORIGINALS - 3} more groups" in text


def test_the_api_pages_the_groups(collection: Path, module_env) -> None:
    service = Service(module_env)
    try:
        with httpx.Client(base_url=service.url, timeout=120) as http:
            pages = [http.get("/api/duplicates", params={"offset": offset}).json() for offset in (0, 20, 40)]
            assert [len(page["groups"]) for page in pages] == [20, 20, ORIGINALS - 40]
            ids = [group["keep"] for page in pages for group in page["groups"]]
            assert len(set(ids)) == ORIGINALS and pages[2]["offset"] == 40
            assert pages[0]["groups"] == duplicates(module_env, "--limit", "20")["groups"]
            exact = http.get("/api/duplicates", params={"kind": "exact", "limit": 5}).json()
            assert exact["groups_total"] == 1
            refused = http.get("/api/duplicates", params={"kind": "exact", "threshold": 3})
            assert refused.status_code == 400 and "exact" in refused.json()["detail"]
            assert http.get("/api/duplicates", params={"kind": "nearby"}).status_code == 422
    finally:
        service.stop()


@pytest.mark.browser
def test_the_page_shows_groups_side_by_side_and_pages_through_them(collection: Path, module_env) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_page import CHROMIUM, shot

    service = Service(module_env)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(service.url)
            page.click("#duplicates-link")
            page.wait_for_selector(".group", timeout=60_000)
            assert "view=duplicates" in page.url
            assert page.locator(".group").count() == 20
            first = page.locator(".group").first
            assert first.locator(".member").count() == 6 and first.locator(".member.keeper").count() == 1
            assert "keep" in first.locator(".member.keeper .badge").inner_text()
            assert "640\N{MULTIPLICATION SIGN}480" in first.locator(".member.keeper .facts").inner_text()
            assert f"{ORIGINALS} groups of resaved duplicates" in page.inner_text("#duplicates-info")
            shown = "[...document.querySelectorAll('.group:first-child img')].every(i => i.complete && i.naturalWidth)"
            page.wait_for_function(shown)  # the first group's thumbnails (the others load as they scroll into view)
            shot(page, "duplicates-page.png")

            titles = page.locator(".group h2").all_inner_texts()
            page.click("#next-groups")
            page.wait_for_url("**offset=20**")
            page.wait_for_function("document.querySelector('.group h2')?.textContent.startsWith('#21')")
            second = page.locator(".group h2").all_inner_texts()
            assert second != titles and not page.is_hidden("#previous-groups")

            shared = browser.new_page()  # the URL alone shows the same page of groups
            shared.goto(page.url)
            shared.wait_for_selector(".group")
            assert shared.locator(".group h2").all_inner_texts() == second
            shared.close()

            page.select_option("#dup-kind", "exact")
            page.click("#duplicates-button")
            page.wait_for_url("**kind=exact**")
            page.wait_for_function("document.querySelectorAll('.group').length === 1")
            assert page.locator(".group .member").count() == 3 and page.is_hidden("#next-groups")
            page.go_back()
            page.wait_for_function("document.querySelector('.group h2')?.textContent.startsWith('#21')")
            browser.close()
            assert not errors, errors
    finally:
        service.stop()


# -- older documents and a live folder -----------------------------------------------------------------------------


def test_documents_stored_before_the_hash_get_it_from_the_next_run_without_the_model(cli_env, tmp_path) -> None:
    import lancedb

    env = cli_env | {"IMGVEC_MODEL": "imgvec-tiny/random"}
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(3):
        image = textured_photo(200 + n, (480, 360))
        (folder / f"p{n}.jpg").write_bytes(encode(image, "JPEG", quality=90))
        (folder / f"p{n}-small.jpg").write_bytes(encode(image.resize((240, 180)), "JPEG", quality=75))
    assert run_cli(["ingest", str(folder)], env).returncode == 0
    lancedb.connect(Path(env["IMGVEC_STORE"])).open_table("images").drop_columns(
        ["perceptual_hash", "width", "height", "taken_at"]  # what an imgvec from before them wrote
    )
    before = duplicates(env)
    assert (before["groups_total"], before["unhashed"]) == (0, 6)
    assert "no perceptual hash yet" in run_cli(["duplicates"], env).stdout

    filled = json.loads(run_cli(["ingest", str(folder), "--json"], env).stdout)
    assert (filled["embedded"], filled["cache_hits"], filled["unchanged"]) == (0, 6, 0)  # read again, no model
    after = duplicates(env)
    assert (after["groups_total"], after["unhashed"]) == (3, 0)
    again = json.loads(run_cli(["ingest", str(folder), "--json"], env).stdout)
    assert again["unchanged"] == 6


def test_watch_puts_a_new_copy_in_its_group_and_takes_it_out(cli_env, tmp_path) -> None:
    env = cli_env | {"IMGVEC_MODEL": "imgvec-tiny/random"}
    folder = tmp_path / "photos"
    (folder / "inbox").mkdir(parents=True)
    for n in range(3):
        (folder / f"p{n}.jpg").write_bytes(encode(textured_photo(300 + n, (480, 360)), "JPEG", quality=90))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", "watch", str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def groups_when(condition, what: str) -> list[dict]:
        deadline = time.monotonic() + 120
        while True:
            shown = run_cli(["duplicates", "--json"], env)
            groups = json.loads(shown.stdout)["groups"] if shown.returncode == 0 else None
            if groups is not None and condition(groups):
                return groups
            assert watcher.poll() is None and time.monotonic() < deadline, f"never {what}"
            time.sleep(1)

    try:
        groups_when(lambda groups: groups == [], "indexed the folder")
        small = textured_photo(301, (480, 360)).resize((240, 180))
        (folder / "inbox/p1-small.jpg").write_bytes(encode(small, "JPEG", quality=70))
        groups = groups_when(lambda groups: len(groups) == 1, "grouped the new copy")
        assert paths(groups[0]) == [str(folder / "p1.jpg"), str(folder / "inbox/p1-small.jpg")]

        (folder / "inbox/p1-small.jpg").rename(folder / "p1-small.jpg")  # moved: its facts move with it
        groups = groups_when(lambda groups: groups and str(folder / "p1-small.jpg") in paths(groups[0]), "moved")
        assert paths(groups[0]) == [str(folder / "p1.jpg"), str(folder / "p1-small.jpg")]

        (folder / "p1-small.jpg").unlink()
        groups_when(lambda groups: groups == [], "dropped the deleted copy")
    finally:
        watcher.terminate()
        watcher.wait(timeout=60)

"""The search page in a real Chromium (Debian's /usr/bin/chromium, driven by Playwright), served by a real
`imgvec serve`. Screenshots are kept in test-artifacts/ at the repository root."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_MODEL
from tests.helpers import Service, camera_and_phone_photos, encode, photo, run_cli

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TOKEN = "page-token"


@pytest.fixture(scope="module")
def photos(module_env: dict[str, str]) -> Path:
    folder = Path(module_env["IMGVEC_STORE"]).parent / "photos"
    (folder / "2024").mkdir(parents=True)
    (folder / "2025").mkdir()
    for i in range(10):
        (folder / "2024" / f"img{i}.jpg").write_bytes(encode(photo(300 + i)))
    for i in range(4):
        (folder / "2025" / f"shot{i}.png").write_bytes(encode(photo(400 + i), "PNG"))
    assert run_cli(["ingest", str(folder)], module_env).returncode == 0
    return folder


@pytest.fixture(scope="module")
def service(module_env: dict[str, str], photos: Path) -> Iterator[Service]:
    running = Service(module_env)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors


def grid_paths(page) -> list[str]:
    return page.locator(".result .path").all_inner_texts()


def wait_for_grid(page, previous: list[str] | None = None) -> list[str]:
    page.wait_for_selector(".result", timeout=30_000)
    if previous is not None:
        # both sides serialised by JSON.stringify: Python's json.dumps spaces its separators, so it never matched
        page.wait_for_function(
            "previous => JSON.stringify([...document.querySelectorAll('.result .path')].map(e => e.textContent))"
            " !== JSON.stringify(previous)",
            arg=previous,
            timeout=30_000,
        )
    page.wait_for_function("!document.querySelector('#results').hasAttribute('aria-busy')")
    return grid_paths(page)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_type_a_query_upload_an_image_click_a_result_and_share_the_url(page, service, photos) -> None:
    page.goto(service.url)
    page.wait_for_function("document.querySelector('#index-info').textContent.includes('14 documents')")
    assert "random weights" in page.inner_text("#notice")  # the test model says so, as any random model would

    page.fill("#query", "a sunny beach")
    page.press("#query", "Enter")
    paths = wait_for_grid(page)
    assert len(paths) == 14 and "q=a+sunny+beach" in page.url
    scores = [float(s) for s in page.locator(".result .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
    shot(page, "serve-page.png")

    query = photos / "2024" / "img4.jpg"
    page.set_input_files("#image-input", str(query))
    paths = wait_for_grid(page, paths)
    assert paths[0] == str(query)
    assert page.locator("#query-info img").count() == 1  # the query picture is shown

    page.locator(".result").nth(2).click()
    clicked = paths[2]
    page.wait_for_url("**similar=**")
    paths = wait_for_grid(page, paths)
    assert paths[0] == clicked
    assert clicked in page.inner_text("#query-info")

    shared = page.url  # the same URL in a fresh tab shows the same results
    other = page.context.new_page()
    other.goto(shared)
    assert wait_for_grid(other) == paths
    other.close()

    page.go_back()  # history: back to the image search's state (the filters; the picture itself is not in a URL)
    page.wait_for_function("!location.search.includes('similar')")


def test_filters_live_in_the_url(page, service, photos) -> None:
    page.goto(f"{service.url}/?q=mountains&ext=png&k=10")
    paths = wait_for_grid(page)
    assert len(paths) == 4 and all(p.endswith(".png") for p in paths)
    assert page.input_value("#ext") == "png"
    page.fill("#ext", "")
    page.fill("#path-prefix", str(photos / "2024") + "/")
    page.fill("#k", "3")
    page.press("#query", "Enter")
    paths = wait_for_grid(page, paths)
    assert len(paths) == 3 and all("/2024/" in p for p in paths)
    assert "path_prefix=" in page.url and "k=3" in page.url


def test_drop_and_paste_an_image(page, service, photos) -> None:
    page.goto(service.url)
    query = photos / "2025" / "shot2.png"
    data = base64.b64encode(query.read_bytes()).decode()
    make_transfer = """([data, name]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'image/png'}));
        return transfer;
    }"""
    transfer = page.evaluate_handle(make_transfer, [data, "dropped.png"])
    page.dispatch_event("body", "dragenter", {"dataTransfer": transfer})
    assert page.is_visible("#drop-zone")
    page.dispatch_event("body", "drop", {"dataTransfer": transfer})
    paths = wait_for_grid(page)
    assert paths[0] == str(query) and not page.is_visible("#drop-zone")

    page.fill("#query", "")
    page.evaluate(
        f"""([data, name]) => {{
            const transfer = ({make_transfer})([data, name]);
            document.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: transfer, bubbles: true}}));
        }}""",
        [base64.b64encode((photos / "2024" / "img7.jpg").read_bytes()).decode(), "pasted.png"],
    )
    paths = wait_for_grid(page, paths)
    assert paths[0] == str(photos / "2024" / "img7.jpg")


def test_a_running_ingest_shows_as_a_live_progress_line(page, service, module_env, photos) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", "watch", str(photos)],
        env=module_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            deadline = time.monotonic() + 120
            while http.get("/api/progress").json().get("state") != "running":
                assert time.monotonic() < deadline, "the watch never reported running"
                time.sleep(0.5)
        page.goto(service.url)
        page.wait_for_selector("#progress:not([hidden])", timeout=15_000)
        assert "Ingest running (watch" in page.inner_text("#progress")
    finally:
        watcher.terminate()
        watcher.wait(timeout=60)
    page.wait_for_selector("#progress", state="hidden", timeout=15_000)


def test_a_token_is_asked_for_once_and_thumbnails_still_load(browser, module_env, photos) -> None:
    guarded = Service({**module_env, "IMGVEC_TOKEN": TOKEN})
    context = browser.new_context()
    try:
        page = context.new_page()
        asked: list[str] = []

        def answer(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept(TOKEN)

        page.on("dialog", answer)
        page.goto(f"{guarded.url}/?q=a+cat&k=5")
        wait_for_grid(page)
        page.wait_for_function("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
        assert len(asked) == 1 and "token" in asked[0]
    finally:
        context.close()
        guarded.stop()


def test_an_empty_store_and_an_unreachable_one_are_explained(page, module_env, tmp_path) -> None:
    empty = Service({**module_env, "IMGVEC_STORE": str(tmp_path / "nothing-here")})
    try:
        page.goto(empty.url)
        page.wait_for_selector("#notice:not([hidden])")
        assert "imgvec ingest" in page.inner_text("#notice")
    finally:
        empty.stop()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = Service({**module_env, "IMGVEC_STORE": f"http://127.0.0.1:{port}"})
    try:
        page.goto(down.url)
        page.wait_for_selector("#notice.error:not([hidden])")
        assert "cannot be reached" in page.inner_text("#notice")
        shot(page, "serve-page-unreachable.png")
    finally:
        down.stop()


def wait_for_names(page, names: list[str]) -> list[str]:
    """The grid once it shows exactly these files (in any order): a picked filter searches at once, so a test that
    waits for "any change" can stop at an intermediate grid."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "names => JSON.stringify([...document.querySelectorAll('.result .path')]"
            ".map(e => e.textContent.split('/').pop()).sort()) === JSON.stringify(names)",
            arg=sorted(names),
            timeout=30_000,
        )
    except PlaywrightTimeout:
        raise AssertionError(f"{grid_paths(page)} at {page.url}, notice {page.inner_text('#notice')!r}") from None
    page.wait_for_function("!document.querySelector('#results').hasAttribute('aria-busy')")
    return grid_paths(page)


def test_pick_a_camera_a_date_range_and_a_place(page, cli_env, tmp_path) -> None:
    """The pickers are fed from the index's own values (/api/facets) and narrow the search on the spot."""
    env = cli_env | {"IMGVEC_MODEL": TINY_MODEL}
    folder = camera_and_phone_photos(tmp_path / "photos")
    assert run_cli(["ingest", str(folder)], env).returncode == 0
    running = Service(env)
    try:
        page.goto(running.url)
        page.wait_for_function("document.querySelectorAll('#camera option').length === 4")
        options = page.locator("#camera option").all_inner_texts()  # one photo each: any order
        assert options[0] == "any camera"
        assert sorted(options[1:]) == ["Apple iPhone 12 Pro (1)", "Canon EOS R5 (1)", "samsung SM-G991B (1)"]
        assert (page.get_attribute("#taken-from", "min"), page.get_attribute("#taken-to", "max")) == (
            "2019-05-01",
            "2021-08-01",
        )
        assert "3 cameras, taken 2019-05-01 to 2021-08-01, 3 with a place" in page.inner_text("#facets-info")

        page.fill("#query", "a holiday")
        page.press("#query", "Enter")
        paths = wait_for_grid(page)
        assert len(paths) == 4

        page.select_option("#camera", "Canon EOS R5")  # applies at once
        paths = wait_for_names(page, ["paris.jpg"])
        assert "camera=Canon+EOS+R5" in page.url
        assert page.inner_text(".result .facts") == "Canon EOS R5 · 2019-05-01 · 48.857, 2.352"

        page.select_option("#camera", "")
        page.fill("#taken-from", "2019-01-01")
        page.fill("#taken-to", "2019-12-31")
        page.press("#query", "Enter")
        paths = wait_for_names(page, ["paris.jpg", "sydney.jpg"])
        assert "taken_from=2019-01-01" in page.url and "taken_to=2019-12-31" in page.url

        page.fill("#near", "-33.86,151.21")
        page.fill("#within", "25")
        page.press("#query", "Enter")
        paths = wait_for_names(page, ["sydney.jpg"])
        shot(page, "serve-page-filters.png")

        shared = page.url  # every filter lives in the URL: a fresh tab shows the same search, the pickers set
        other = page.context.new_page()
        other.goto(shared)
        assert wait_for_grid(other) == paths
        assert other.input_value("#near") == "-33.86,151.21" and other.input_value("#taken-to") == "2019-12-31"
        other.close()

        page.fill("#near", "1,2,3")
        page.press("#query", "Enter")
        page.wait_for_function("document.querySelector('#notice').textContent.includes('give LAT,LON')")
    finally:
        running.stop()

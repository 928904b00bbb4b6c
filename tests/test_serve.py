"""`imgvec serve` against a real uvicorn on 127.0.0.1: the API's flows, its security, and fuzzing from its own
OpenAPI schema. Every request goes over TCP to the process a user would start."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imgvec.documents import ImageDocument, SourceItem
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import Service, encode, photo, run_cli

TOKEN = "correct-horse-battery-staple"
JPEGS, PNGS = 8, 3


@pytest.fixture(scope="module")
def photos(module_env: dict[str, str]) -> Path:
    """Indexed: 8 JPEGs under a/, 3 PNGs under b/, and one file that is not an image (a recorded failure)."""
    folder = Path(module_env["IMGVEC_STORE"]).parent / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for i in range(JPEGS):
        (folder / "a" / f"p{i}.jpg").write_bytes(encode(photo(700 + i)))
    for i in range(PNGS):
        (folder / "b" / f"q{i}.png").write_bytes(encode(photo(800 + i), "PNG"))
    (folder / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    result = run_cli(["ingest", str(folder)], module_env)
    assert result.returncode == 3, result.stderr
    return folder


@pytest.fixture(scope="module")
def service(module_env: dict[str, str], photos: Path) -> Iterator[Service]:
    running = Service(module_env, "--batch-wait-ms", "50", "--max-upload-mb", "2", "--body-timeout", "2")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def guarded(module_env: dict[str, str], photos: Path) -> Iterator[Service]:
    running = Service({**module_env, "IMGVEC_TOKEN": TOKEN})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=60) as http:
        yield http


def stored(module_env: dict[str, str]) -> dict[str, dict]:
    """What the index holds, by file path: id and vector."""
    rows = EmbeddedStore(module_env["IMGVEC_STORE"], "images")._open().to_arrow().to_pylist()
    return {row["file_path"]: row for row in rows}


# -- the main flows ------------------------------------------------------------------------------------


def test_text_search_returns_what_the_cli_prints(client, module_env) -> None:
    answer = client.get("/api/search", params={"q": "a red car", "k": 5})
    assert answer.status_code == 200
    cli = json.loads(run_cli(["search", "a red car", "-k", "5", "--json"], module_env).stdout)
    assert [h["id"] for h in answer.json()] == [h["id"] for h in cli]
    assert [h["score"] for h in answer.json()] == pytest.approx([h["score"] for h in cli], abs=1e-5)
    first = answer.json()[0]
    assert {"id", "file_path", "score", "file_name", "file_extension", "file_size"} <= set(first)
    assert "vector" not in first


def test_image_search_finds_the_uploaded_picture_first_and_filters_apply(client, photos) -> None:
    query = photos / "a" / "p3.jpg"
    answer = client.post("/api/search", params={"k": 4}, files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    hits = answer.json()
    assert hits[0]["file_path"] == str(query) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    pngs = client.get("/api/search", params={"q": "anything", "k": 10, "ext": "PNG"}).json()
    assert len(pngs) == PNGS and all(h["file_extension"] == "png" for h in pngs)
    both = client.get("/api/search", params=[("q", "x"), ("k", "20"), ("ext", "png"), ("ext", "jpg")]).json()
    assert len(both) == JPEGS + PNGS
    under_b = client.get("/api/search", params={"q": "x", "k": 20, "path_prefix": str(photos / "b") + "/"}).json()
    assert sorted(Path(h["file_path"]).name for h in under_b) == [f"q{i}.png" for i in range(PNGS)]


def test_similar_puts_the_document_first_and_a_document_comes_without_its_vector(client, module_env, photos) -> None:
    doc_id = stored(module_env)[str(photos / "a" / "p5.jpg")]["id"]
    hits = client.get(f"/api/similar/{doc_id}", params={"k": 3}).json()
    assert len(hits) == 3 and hits[0]["id"] == doc_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    document = client.get(f"/api/documents/{doc_id}").json()
    assert document["file_path"] == str(photos / "a" / "p5.jpg") and document["id"] == doc_id
    assert "vector" not in document and isinstance(document["indexed_at"], str)


def test_a_document_without_a_vector_has_no_neighbours_yet(client, module_env) -> None:
    waiting = ImageDocument(SourceItem.of_path("/nas/not-yet-embedded.jpg", 10, 1.0), None)
    EmbeddedStore(module_env["IMGVEC_STORE"], "images").upsert([waiting])
    try:
        answer = client.get(f"/api/similar/{waiting.id}")
        assert answer.status_code == 409 and "ingest --missing" in answer.json()["detail"]
        assert client.get(f"/api/documents/{waiting.id}").json()["file_path"] == "/nas/not-yet-embedded.jpg"
    finally:
        EmbeddedStore(module_env["IMGVEC_STORE"], "images").delete([waiting.id])


def test_thumbnails_are_jpegs_made_once_then_served_from_the_cache(client, module_env, photos) -> None:
    original = photos / "a" / "p6.jpg"
    doc_id = stored(module_env)[str(original)]["id"]
    answer = client.get(f"/api/thumbnail/{doc_id}", params={"size": 64})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    with Image.open(__import__("io").BytesIO(answer.content)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 64
    # The original goes away: the thumbnail made before still comes from the cache; a new size cannot be made.
    moved = original.with_suffix(".away")
    original.rename(moved)
    try:
        again = client.get(f"/api/thumbnail/{doc_id}", params={"size": 64})
        assert again.status_code == 200 and again.content == answer.content
        missing = client.get(f"/api/thumbnail/{doc_id}", params={"size": 65})
        assert missing.status_code == 404 and "cannot read" in missing.json()["detail"]
    finally:
        moved.rename(original)


def test_embed_returns_the_vector_the_ingest_stored_for_the_same_bytes(client, module_env, photos) -> None:
    path = photos / "a" / "p1.jpg"
    vector = np.asarray(stored(module_env)[str(path)]["vector"], dtype=np.float32)
    computed = client.post(
        "/api/embed", params={"useCache": "false"}, content=path.read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert computed.status_code == 200, computed.text
    data = computed.json()["data"]
    assert data["dimension"] == 512 == len(data["embedding"]) and data["model"] == "imgvec-tiny/random"
    assert data["cached"] is False
    assert float(np.dot(np.asarray(data["embedding"]), vector)) >= 0.9999
    cached = client.post("/api/embed", content=path.read_bytes(), headers={"content-type": "application/octet-stream"})
    assert cached.json()["data"]["cached"] is True
    assert np.allclose(cached.json()["data"]["embedding"], vector)


def test_concurrent_embeds_share_model_calls(client, service, photos) -> None:
    bodies = [encode(photo(900 + i)) for i in range(16)]
    before = _batches(client)
    answers: list[httpx.Response] = []

    def call(body: bytes) -> None:
        with httpx.Client(base_url=service.url, timeout=60) as own:
            answers.append(own.post("/api/embed?useCache=false", content=body))

    threads = [threading.Thread(target=call, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200] * 16
    calls, served = (after - first for after, first in zip(_batches(client), before, strict=True))
    assert served == 16 and calls < 16, f"{calls} model calls for 16 concurrent requests"


def _batches(client: httpx.Client) -> tuple[float, float]:
    """(model calls, requests they served) for images, from /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "imgvec_model_batch_size":
            samples = {s.name: s.value for s in family.samples if s.labels.get("kind") == "image"}
            return samples.get("imgvec_model_batch_size_count", 0), samples.get("imgvec_model_batch_size_sum", 0)
    return 0, 0


def test_status_progress_and_failures_are_the_cli_json(client, module_env) -> None:
    for path, command in (("/api/status", "status"), ("/api/progress", "progress"), ("/api/failures", "failures")):
        assert client.get(path).json() == json.loads(run_cli([command, "--json"], module_env).stdout), path
    failures = client.get("/api/failures").json()
    assert [(Path(f["file_path"]).name, f["stage"]) for f in failures] == [("broken.jpg", "decode")]
    assert client.get("/api/failures", params={"offset": 1}).json() == []


def test_metrics_are_prometheus_and_imgvec_metrics_prints_the_same_run(client, module_env) -> None:
    client.get("/api/search", params={"q": "a dog"})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["imgvec_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/api/search", "200")] >= 1
    assert "imgvec_http_request_duration_seconds" in families
    served = {s.name: s.value for s in families["imgvec_images_embedded"].samples}
    printed = {
        f.name: f for f in text_string_to_metric_families(run_cli(["metrics"], module_env).stdout)
    }  # the same library, the same names
    assert served == {s.name: s.value for s in printed["imgvec_images_embedded"].samples}
    assert served["imgvec_images_embedded_total"] == JPEGS + PNGS
    stages = {s.labels["stage"] for s in printed["imgvec_stage_seconds"].samples}
    assert stages == {"list", "read", "decode", "embed", "write"}


def test_healthz_the_page_and_the_openapi_schema(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "<title>imgvec search</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: every asset comes from here
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/search", "/api/similar/{doc_id}", "/api/documents/{doc_id}", "/api/thumbnail/{doc_id}"):
        assert path in paths
    assert {"/api/embed", "/api/status", "/api/progress", "/api/failures", "/metrics", "/healthz"} <= set(paths)


def test_the_routes_answer_in_process_as_over_tcp(client, module_env, photos, tmp_path) -> None:
    """``create_app`` with no server: the same routes through Starlette's test client give what uvicorn gives, and
    two apps in one process keep their own searcher, token and metrics."""
    from fastapi.testclient import TestClient

    from imgvec.service.app import create_app
    from imgvec.service.searcher import ServiceConfig
    from imgvec.settings import Settings

    settings = Settings(
        store=module_env["IMGVEC_STORE"],
        model=module_env["IMGVEC_MODEL"],
        threads=2,
        cache_dir=module_env["IMGVEC_CACHE_DIR"],
        model_config_dir=module_env["IMGVEC_MODEL_CONFIG_DIR"],
    )
    open_app = create_app(settings, ServiceConfig(thumbnail_dir=tmp_path / "open"))
    guarded_app = create_app(settings, ServiceConfig(token=TOKEN, thumbnail_dir=tmp_path / "guarded"))
    with TestClient(open_app) as inside, TestClient(guarded_app) as locked:
        query = {"q": "a photo", "k": 5}
        assert inside.get("/api/search", params=query).json() == client.get("/api/search", params=query).json()
        assert inside.get("/api/status").json() == client.get("/api/status").json()
        assert locked.get("/api/status").status_code == 401
        assert locked.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert locked.get("/healthz").status_code == 200
        scraped = inside.get("/metrics").text
        assert 'imgvec_http_requests_total{method="GET",route="/api/search",status="200"} 1.0' in scraped
        assert 'route="/api/status",status="401"' in locked.get("/metrics").text
        assert 'status="401"' not in scraped


# -- security ------------------------------------------------------------------------------------------


def test_a_token_guards_every_api_route_and_leaves_health_and_metrics_open(guarded, module_env, photos) -> None:
    doc_id = stored(module_env)[str(photos / "a" / "p0.jpg")]["id"]
    image = (photos / "a" / "p0.jpg").read_bytes()
    routes = [
        ("GET", "/api/search?q=cat", None),
        ("POST", "/api/embed", image),
        ("GET", f"/api/thumbnail/{doc_id}", None),
        ("GET", f"/api/documents/{doc_id}", None),  # paths and fields of the collection
        ("GET", f"/api/similar/{doc_id}", None),
        ("GET", "/api/failures", None),
        ("GET", "/api/status", None),
        ("GET", "/api/progress", None),
    ]
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        for method, path, body in routes:
            assert http.request(method, path, content=body).status_code == 401, path
            wrong = http.request(method, path, content=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer", path
            right = http.request(method, path, content=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert right.status_code == 200, (path, right.text)
        upload = http.post("/api/search", files={"image": ("q.jpg", image, "image/jpeg")})
        assert upload.status_code == 401
        for path in ("/healthz", "/metrics", "/", "/static/app.js"):
            assert http.get(path).status_code == 200, path
        assert http.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN


def test_an_empty_token_is_refused_from_the_environment_as_from_the_flag(module_env) -> None:
    for env, args in (({"IMGVEC_TOKEN": ""}, []), ({"IMGVEC_TOKEN": "  "}, []), ({}, ["--token="])):
        result = run_cli(["serve", "--host", "0.0.0.0", "--port", "0", *args], {**module_env, **env}, timeout=60)
        assert result.returncode == 2, (env, args, result.stderr)
        assert "is empty" in result.stderr and "Traceback" not in result.stderr


def test_requests_naming_another_host_are_refused(client, service) -> None:
    """DNS rebinding: a page elsewhere reaches the loopback service under its own name, which the Host header
    still carries."""
    port = service.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}", ""):
        refused = client.get("/api/status", headers={"Host": host})
        assert refused.status_code == 400 and "--allowed-host" in refused.json()["detail"], host


def test_allowed_hosts_follow_the_bound_address_or_the_list_given() -> None:
    from imgvec.service.hosts import allowed_hosts, host_of

    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("0.0.0.0") == {"*"}
    assert allowed_hosts("0.0.0.0", ["photos.example.org", " "]) == {"photos.example.org"}
    assert allowed_hosts("192.0.2.7") == {"192.0.2.7"}
    assert [host_of(h) for h in ("[::1]:8000", "Example.org:80", "::1", "a")] == ["::1", "example.org", "::1", "a"]


@pytest.mark.parametrize(
    "doc_id",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "..",
        "%2e%2e",
        "etc%2Fpasswd%00.jpg",
        "0" * 40,
        "C:%5CWindows%5Cwin.ini",
        "x" * 600,
    ],
)
def test_path_parameters_never_reach_the_file_system(client, photos, doc_id) -> None:
    for route in ("/api/documents/", "/api/similar/", "/api/thumbnail/"):
        answer = client.get(route + doc_id)
        assert answer.status_code in (404, 422), (route, doc_id, answer.status_code)
        assert "root:" not in answer.text and "[fonts]" not in answer.text


def test_an_indexed_file_path_is_not_an_id(client, photos) -> None:
    path = str(photos / "a" / "p0.jpg")
    for route in ("/api/documents/", "/api/thumbnail/"):
        assert client.get(route + path.replace("/", "%2F")).status_code == 404


def test_uploads_over_the_limit_are_refused_declared_or_streamed(client, service) -> None:
    big = b"\xff\xd8" + os.urandom(3 << 20)  # over --max-upload-mb 2
    declared = client.post("/api/embed", content=big)
    assert declared.status_code == 413 and "2 MiB" in declared.json()["detail"]
    streamed = client.post("/api/embed", content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]))
    assert streamed.status_code == 413
    multipart = client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert multipart.status_code == 413
    assert client.get("/healthz").status_code == 200


def test_bombs_and_corrupt_uploads_are_400_with_a_reason(client) -> None:
    bomb = encode(Image.new("1", (15_000, 15_000)), "PNG")  # 225 MP of one colour: a few kB on the wire
    answer = client.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert answer.status_code == 400 and "pixels" in answer.json()["detail"], answer.text
    assert client.post("/api/embed", content=bomb).status_code == 400
    cut = encode(photo(1))[:500]
    answer = client.post("/api/embed", content=cut)
    assert answer.status_code == 400 and answer.json()["detail"]
    for junk in (b"", b"GIF89a", b"\x00" * 100):
        assert client.post("/api/embed", content=junk).status_code == 400
    empty = client.post("/api/search", files={"image": ("e.jpg", b"", "image/jpeg")})
    assert empty.status_code == 400


def test_embed_reads_only_s3_urls(client) -> None:
    for url in ("/etc/passwd", "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "../x.jpg"):
        answer = client.post("/api/embed", json={"imageUrl": url})
        assert answer.status_code == 400 and "s3://" in answer.json()["detail"], url
    assert client.post("/api/embed", json={"useCache": True}).status_code == 422
    assert (
        client.post("/api/embed", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    )


def test_client_mistakes_in_an_image_url_are_4xx_not_retryable_5xx(client) -> None:
    for url in ("s3://a b/x.jpg", "s3://photos/../../etc/passwd", "s3://photos/a/./b.jpg", "s3://photos/"):
        answer = client.post("/api/embed", json={"imageUrl": url})
        assert answer.status_code == 400, (url, answer.status_code, answer.text)
        assert "\n" not in answer.json()["detail"]
    # header values are case-insensitive: this is the JSON form, not image bytes
    body = json.dumps({"imageUrl": "/etc/passwd"}).encode()
    answer = client.post("/api/embed", content=body, headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert answer.status_code == 400 and "imageUrl must be" in answer.json()["detail"]


def test_a_client_that_disconnects_mid_body_leaves_no_traceback(module_env, photos) -> None:
    running = Service(module_env)
    try:
        for path in ("/api/embed", "/api/search"):
            with socket.create_connection(("127.0.0.1", running.port)) as raw:
                raw.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                    "Content-Length: 100000\r\n\r\n--x\r\n".encode()
                    + b"Content-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
                    + b"\xff" * 1000
                )
                time.sleep(0.3)
        with httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.get("/healthz").status_code == 200
    finally:
        output = running.stop()
    assert "Traceback" not in output and "ClientDisconnect" not in output, output


def _concurrently(call, arguments: list[object]) -> None:
    threads = [threading.Thread(target=call, args=(argument,)) for argument in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_huge_pictures_take_turns_within_the_decode_memory(module_env, photos) -> None:
    """A one-colour 14000x14000 PNG is 600 kB on the wire and 588 MB as RGB: four at once took the service from
    2.1 to 7.5 GB. Each is now reduced a strip at a time, and decodes in flight are bounded by --decode-memory-mb."""
    psutil = pytest.importorskip("psutil")
    huge = encode(Image.new("RGB", (14_000, 14_000), (200, 30, 40)), "PNG")
    running = Service(module_env, "--decode-memory-mb", "1024")
    try:
        process = psutil.Process(running.process.pid)
        with httpx.Client(base_url=running.url, timeout=120) as http:
            assert http.post("/api/embed", content=encode(photo(1))).status_code == 200  # the model is loaded
            # and has run batches of every size four requests make: OpenVINO sets up each new batch shape once, about
            # 600 MiB of it, which is the runtime's and not the decodes' (the session's measured runtime decides)
            for round_ in range(3):
                _concurrently(
                    lambda n: http.post("/api/embed", content=encode(photo(n)), params={"useCache": "false"}),
                    [10 * round_ + n for n in range(4)],
                )
            before = process.memory_info().rss
            peak = [before]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], process.memory_info().rss)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            answers: list[int] = []

            def post() -> None:
                answers.append(http.post("/api/embed", content=huge, params={"useCache": "false"}).status_code)

            _concurrently(lambda _: post(), [None] * 4)
            done.set()
            sampler.join()
        assert answers == [200] * 4
        grown = (peak[0] - before) >> 20
        # The budget (1024 MiB) plus the service's own: ~950 MiB when this test runs alone, ~1530 MiB after the
        # embed and runtime tests ran in the same session, with torch and OpenVINO alike and the same environment
        # (cause not found yet). Unbounded, four of these pictures grew the service by 5.4 GB.
        assert grown < 2048, f"the service grew by {grown} MiB for four 196 MP pictures"
    finally:
        running.stop()


def test_an_s3_endpoint_that_only_redirects_is_a_502_with_the_reason_after_a_few_requests(module_env) -> None:
    import http.server

    from imgvec.sources.s3 import MAX_SENDS_PER_READ

    seen = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"<Error><Code>PermanentRedirect</Code><Message>elsewhere</Message></Error>"
            self.send_response(301)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    running = Service({**module_env, **aws, "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http_client:
            answer = http_client.post("/api/embed", json={"imageUrl": "s3://photos/a.jpg"})
        assert answer.status_code == 502 and "redirect" in answer.json()["detail"], answer.text
        assert len(seen) <= MAX_SENDS_PER_READ
    finally:
        output = running.stop()
        server.shutdown()
    assert "RecursionError" not in output and "Traceback" not in output


def test_a_slow_client_gets_408_and_holds_up_no_one(service) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as slow:
        slow.sendall(
            b"POST /api/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        )
        slow.sendall(b"\xff\xd8\xff")
        started = time.monotonic()
        with httpx.Client(base_url=service.url, timeout=10) as http:  # others are answered meanwhile
            assert http.get("/healthz").status_code == 200
        assert time.monotonic() - started < 1.5
        answer = slow.recv(4096).decode(errors="replace")
        assert time.monotonic() - started < 10
    assert answer.startswith("HTTP/1.1 408"), answer[:200]


def test_an_unreachable_store_is_503_and_the_process_stays_up(module_env) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = Service({**module_env, "IMGVEC_STORE": f"http://127.0.0.1:{port}"})
    try:
        with httpx.Client(base_url=down.url, timeout=60) as http:
            assert http.get("/healthz").status_code == 200
            for path in ("/api/status", "/api/search?q=x", "/api/documents/abc"):
                answer = http.get(path)
                assert answer.status_code == 503, (path, answer.text)
                assert "cannot reach" in answer.json()["detail"] and "\n" not in answer.json()["detail"]
            assert http.get("/api/progress").status_code == 404
    finally:
        output = down.stop()
    assert "Traceback" not in output


def test_fuzzing_from_the_openapi_schema_finds_no_server_error(service, module_env, photos, tmp_path) -> None:
    doc_id = stored(module_env)[str(photos / "a" / "p2.jpg")]["id"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[[operations]]\ninclude-path-regex = "/api/(documents|similar|thumbnail)/"\n'
        f'parameters = {{ doc_id = "{doc_id}" }}\n'
    )
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "20261126",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "generated" in result.stdout


# -- other stores and sources -----------------------------------------------------------------------


@pytest.mark.s3
def test_embed_by_image_url_reads_the_object_from_s3(module_env, photos, tmp_path_factory) -> None:
    from tests.s3server import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweed-serve"))
    server.start()
    try:
        body = (photos / "a" / "p4.jpg").read_bytes()
        s3 = server.client()
        s3.create_bucket(Bucket="worker")
        s3.put_object(Bucket="worker", Key="in/p 4.jpg", Body=body)
        running = Service({**module_env, **server.env()})
        try:
            with httpx.Client(base_url=running.url, timeout=60) as http:
                direct = http.post("/api/embed", content=body).json()["data"]
                by_url = http.post("/api/embed", json={"imageUrl": "s3://worker/in/p 4.jpg", "useCache": False})
                assert by_url.status_code == 200, by_url.text
                assert by_url.json()["data"]["cached"] is False
                assert np.allclose(by_url.json()["data"]["embedding"], direct["embedding"], atol=1e-5)
                https = f"{server.endpoint}/worker/in/p%204.jpg"  # the path-style URL of the same object
                assert http.post("/api/embed", json={"imageUrl": https}).json()["data"]["cached"] is True
                gone = http.post("/api/embed", json={"imageUrl": "s3://worker/in/missing.jpg"})
                assert gone.status_code == 404 and "no longer exists" in gone.json()["detail"]
                no_bucket = http.post("/api/embed", json={"imageUrl": "s3://no-such-bucket/in/p.jpg"})
                assert no_bucket.status_code == 404 and "does not exist" in no_bucket.json()["detail"]
        finally:
            running.stop()
    finally:
        server.stop()


@pytest.mark.opensearch
def test_the_api_works_the_same_on_opensearch(module_env, photos, opensearch_url, tmp_path) -> None:
    index = f"serve-{os.getpid()}"
    remote = {**module_env, "IMGVEC_STORE": opensearch_url, "IMGVEC_INDEX": index, "HOME": str(tmp_path)}
    folder = tmp_path / "photos"
    shutil.copytree(photos / "a", folder)
    # lucene: the test node's k-NN plugin has no native engines (scripts/opensearch.sh)
    created = run_cli(["index", "create", index, "--engine", "lucene", "--shards", "1", "--replicas", "0"], remote)
    assert created.returncode == 0, created.stderr
    assert run_cli(["ingest", str(folder)], remote).returncode == 3
    running = Service(remote)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            query = folder / "p2.jpg"
            hits = http.post("/api/search", files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")}).json()
            assert hits[0]["file_path"] == str(query) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
            doc_id = hits[0]["id"]
            assert http.get(f"/api/similar/{doc_id}", params={"k": 3}).json()[0]["id"] == doc_id
            document = http.get(f"/api/documents/{doc_id}").json()
            assert document["file_path"] == str(query) and "image_vector" not in document
            assert http.get(f"/api/thumbnail/{doc_id}").headers["content-type"] == "image/jpeg"
            assert http.get("/api/documents/" + "0" * 40).status_code == 404
            status = http.get("/api/status").json()
            assert (status["documents"], status["with_vector"], status["model"]) == (JPEGS, JPEGS, "imgvec-tiny/random")
            assert http.get("/api/search", params={"q": "a boat", "k": 3}).status_code == 200
    finally:
        running.stop()

"""What a photo says about itself (camera, place, capture time) and the searches filtered by it, on both stores.

The files are written the way cameras and phones write them (EXIF in a JPEG, a HEIC, a PNG's eXIf chunk); the
stores are checked against a brute-force search over the same documents, so a filter that drops a match, lets a
non-match through, or returns fewer than k when k exist fails here.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from imgvec.documents import PICTURE_VERSION, ImageDocument, Picture, SourceItem
from imgvec.embed.decode import open_image
from imgvec.embed.picture import Header
from imgvec.errors import UsageError
from imgvec.filters import build_filter, resolve_cameras
from imgvec.identity import IndexIdentity
from imgvec.stores import SearchFilter, embedded_indexes
from imgvec.stores.base import EARTH_RADIUS_KM, Circle, Store
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import (
    NEW_YORK,
    PARIS,
    SYDNEY,
    Service,
    camera_and_phone_photos,
    encode,
    exif_photo,
    run_cli,
    textured_photo,
)

SMALL = IndexIdentity("test-32/none", "test-32", "none", 32)
CAMERAS = [("Apple", "iPhone 12 Pro"), ("Canon", "Canon EOS R5"), ("SONY", "ILCE-7M3"), ("Apple", "iPhone 8"), None]
PLACES = [PARIS, NEW_YORK, SYDNEY, None]


# -- the header ----------------------------------------------------------------------------------------------------


def header(data: bytes) -> Header:
    return Header(open_image(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_the_header_says_which_camera_when_and_where(fmt: str) -> None:
    data = exif_photo(
        1, fmt, make="Apple", model="iPhone 12 Pro", taken="2021:08:01 10:00:00", offset="-04:00", gps=NEW_YORK
    )
    found = header(data)
    assert (found.camera_make, found.camera_model) == ("Apple", "iPhone 12 Pro")
    assert found.taken_at == datetime(2021, 8, 1, 14, 0, tzinfo=UTC)
    assert found.latitude == pytest.approx(NEW_YORK[0], abs=1e-5)
    assert found.longitude == pytest.approx(NEW_YORK[1], abs=1e-5)  # west is negative
    south = header(exif_photo(2, fmt, make="SAMSUNG", model="SM-G991B", gps=SYDNEY))
    assert (south.latitude, south.longitude) == pytest.approx(SYDNEY, abs=1e-5)


def test_a_photo_without_exif_or_with_a_useless_one_has_none_of_it() -> None:
    plain = header(encode(textured_photo(3, (64, 48)), "PNG"))
    assert (plain.camera_make, plain.camera_model, plain.latitude, plain.longitude) == (None, None, None, None)
    void = header(exif_photo(4, make="Canon", model="Canon EOS R5", gps=PARIS, gps_status="V"))
    assert (void.camera_model, void.latitude) == ("Canon EOS R5", None)  # the receiver had no fix
    null_island = header(exif_photo(5, gps=(0.0, 0.0)))
    assert null_island.latitude is None
    padded = header(exif_photo(6, make="NIKON CORPORATION\x00\x00  ", model="x" * 200))
    assert (padded.camera_make, padded.camera_model) == ("NIKON CORPORATION", None)  # garbage is not a camera


def test_a_picture_read_by_an_older_version_is_read_again() -> None:
    picture = Picture(7, 640, 480, None, "Canon", "Canon EOS R5", 1.5, 2.5)
    fields = picture.fields()
    assert fields["picture_version"] == PICTURE_VERSION and Picture.of_fields(fields) == picture
    assert Picture.of_fields({**fields, "picture_version": 1}) is None
    assert Picture.of_fields({**fields, "picture_version": None}) is None


# -- what a person types -------------------------------------------------------------------------------------------


def test_dates_name_whole_periods_and_places_a_circle() -> None:
    year = build_filter(taken_from="2019", taken_to="2019")
    assert (year.taken_from, year.taken_before) == (datetime(2019, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))
    month = build_filter(taken_from="2019-02", taken_to="2019-12")
    assert (month.taken_from, month.taken_before) == (
        datetime(2019, 2, 1, tzinfo=UTC),
        datetime(2020, 1, 1, tzinfo=UTC),
    )
    day = build_filter(taken_to="2020-02-29")
    assert (day.taken_from, day.taken_before) == (None, datetime(2020, 3, 1, tzinfo=UTC))
    instant = build_filter(taken_from="2019-07-14T18:30:00+02:00")
    assert instant.taken_from == datetime(2019, 7, 14, 16, 30, tzinfo=UTC)
    near = build_filter(near=" 48.85, 2.35", extensions=["JPG,.png", "jpg"])
    assert near.near == Circle(48.85, 2.35, 10.0) and near.extensions == ("jpg", "png")
    assert build_filter(near="1,2", within_km=0.5).near == Circle(1.0, 2.0, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"taken_from": "yesterday"}, "give a year (2019)"),
        ({"taken_from": "2019-13"}, "give a year"),
        ({"taken_to": "9999-12"}, "give a year"),
        ({"taken_to": "9999-12-31T23:59:59.999999"}, "give a year"),
        ({"taken_from": "0001-01-01T00:00:00+01:00"}, "give a year"),
        ({"taken_from": "2020", "taken_to": "2019"}, "is after --taken-to"),
        ({"near": "48.8"}, "give LAT,LON"),
        ({"near": "91,0"}, "latitude is within"),
        ({"within_km": 5.0}, "--within needs --near"),
        ({"near": "1,2", "within_km": -1.0}, "above 0"),
        ({"near": "1,2", "within_km": float("nan")}, "above 0"),
    ],
)
def test_a_bad_filter_is_one_clear_sentence(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(UsageError):
        build_filter(**kwargs)  # type: ignore[arg-type]
    try:
        build_filter(**kwargs)  # type: ignore[arg-type]
    except UsageError as exc:
        assert says in str(exc) and "\n" not in str(exc)


# -- both stores, against brute force ------------------------------------------------------------------------------


def corpus(n: int, seed: int = 0) -> tuple[list[ImageDocument], np.ndarray]:
    """``n`` documents: cameras, places (with scatter of a few km), capture times over 2015-2022, extensions and
    folders in the proportions of a family archive, some with no EXIF at all."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, SMALL.dimension)).astype(np.float32)  # photos cluster by subject, as CLIP's
    vectors = centres[rng.integers(len(centres), size=n)] + rng.normal(0, 0.25, (n, SMALL.dimension))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    documents = []
    start = datetime(2015, 1, 1, tzinfo=UTC)
    for i in range(n):
        camera = CAMERAS[int(rng.integers(len(CAMERAS)))]
        place = PLACES[int(rng.integers(len(PLACES)))]
        ext = ("jpg", "jpg", "jpg", "heic", "png")[int(rng.integers(5))]
        folder = ("/nas/events/2019", "/nas/events/2021", "/nas/scans")[int(rng.integers(3))]
        taken = start + timedelta(seconds=int(rng.integers(8 * 365 * 86400))) if camera else None
        latitude = longitude = None
        if place is not None and camera is not None:
            latitude = place[0] + float(rng.normal(0, 0.05))
            longitude = place[1] + float(rng.normal(0, 0.05))
        picture = Picture(
            int(rng.integers(-(2**62), 2**62)), 4000, 3000, taken, *(camera or (None, None)), latitude, longitude
        )
        item = SourceItem.of_path(f"{folder}/img{i:06d}.{ext}", 1000 + i, 1.0)
        documents.append(ImageDocument(item, vectors[i], content_hash=f"h{i}", model=SMALL.model, picture=picture))
    return documents, vectors


def matches(document: ImageDocument, where: SearchFilter) -> bool:
    """The filter, read the plain way."""
    fields = document.fields()
    if where.extensions and fields["file_extension"] not in where.extensions:
        return False
    if where.path_prefix and not fields["file_path"].startswith(where.path_prefix):
        return False
    taken = fields["taken_at"]
    if (where.taken_from or where.taken_before) and taken is None:
        return False
    if where.taken_from and taken < where.taken_from:
        return False
    if where.taken_before and taken >= where.taken_before:
        return False
    if where.cameras and not {fields["camera_make"], fields["camera_model"]} & set(where.cameras):
        return False
    if where.near is not None:
        if fields["latitude"] is None:
            return False
        return distance_km(fields["latitude"], fields["longitude"], where.near) <= where.near.km
    return True


def distance_km(latitude: float, longitude: float, circle: Circle) -> float:
    a1, a2 = math.radians(latitude), math.radians(circle.latitude)
    half = (
        math.sin((a2 - a1) / 2) ** 2
        + math.cos(a1) * math.cos(a2) * math.sin(math.radians(circle.longitude - longitude) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(half))


FILTERS = {
    "one extension": SearchFilter(extensions=("heic",)),
    "one year": build_filter(taken_from="2019", taken_to="2019"),
    "extension and year": build_filter(extensions=["png"], taken_from="2019", taken_to="2019"),
    "a make": SearchFilter(cameras=("Apple",)),
    "a model and a folder": SearchFilter(cameras=("Canon EOS R5",), path_prefix="/nas/events/"),
    "near Paris": build_filter(near=f"{PARIS[0]},{PARIS[1]}", within_km=8),
    "near Sydney, a camera, a month": build_filter(
        near=f"{SYDNEY[0]},{SYDNEY[1]}", within_km=20, cameras=["SONY"], taken_from="2018-03", taken_to="2018-05"
    ),
    "nothing matches": build_filter(taken_from="2030"),
}


def check_filters(store: Store, documents: list[ImageDocument], vectors: np.ndarray, *, k: int, exact: bool) -> None:
    rng = np.random.default_rng(1)
    for name, where in FILTERS.items():
        allowed = np.array([matches(document, where) for document in documents])
        for _ in range(3):
            query = vectors[int(rng.integers(len(vectors)))] + rng.normal(0, 0.1, vectors.shape[1]).astype(np.float32)
            scores = np.where(allowed, vectors @ (query / np.linalg.norm(query)), -np.inf)
            best = [documents[i].id for i in np.argsort(-scores)[: min(k, int(allowed.sum()))]]
            hits = store.search(query, k, where)
            assert len(hits) == len(best), f"{name}: {len(hits)} hits, {len(best)} expected"
            by_id = {document.id: document for document in documents}
            assert all(matches(by_id[hit.id], where) for hit in hits), f"{name}: a hit outside the filter"
            found = len({hit.id for hit in hits} & set(best))
            if exact:
                assert found == len(best), f"{name}: recall {found}/{len(best)}"
            else:
                assert found >= 0.8 * len(best), f"{name}: recall {found}/{len(best)}"
    assert sum(matches(document, FILTERS["near Paris"]) for document in documents) > k  # the circles hold photos


def check_facets(store: Store, documents: list[ImageDocument]) -> None:
    facets = store.facets()
    expected: dict[tuple[str | None, str | None], int] = {}
    for document in documents:
        picture = document.picture
        if picture is not None and picture.camera_make:
            key = (picture.camera_make, picture.camera_model)
            expected[key] = expected.get(key, 0) + 1
    assert {(c.make, c.model): c.count for c in facets.cameras} == expected
    assert [c.count for c in facets.cameras] == sorted(expected.values(), reverse=True)
    taken = [d.picture.taken_at for d in documents if d.picture and d.picture.taken_at]
    assert (facets.taken_first, facets.taken_last) == (min(taken), max(taken))
    assert facets.located == sum(1 for d in documents if d.picture and d.picture.latitude is not None)
    assert dict(facets.extensions) == {
        ext: sum(1 for d in documents if d.item.file_extension == ext) for ext in ("jpg", "heic", "png")
    }
    named = {camera.name for camera in facets.cameras}
    assert {"Apple iPhone 12 Pro", "Canon EOS R5", "SONY ILCE-7M3"} <= named
    resolved = resolve_cameras(SearchFilter(cameras=("apple iphone 12 pro", "canon")), facets, store.index)
    assert resolved.cameras == ("iPhone 12 Pro", "Canon")
    with pytest.raises(UsageError, match=r"'Leica'; it has .*Apple iPhone 12 Pro"):
        resolve_cameras(SearchFilter(cameras=("Leica",)), facets, store.index)


def test_the_embedded_store_filters_inside_the_search_through_scalar_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """13,000 documents: past the scalar indexes' threshold and (lowered here) the vector index's, so each filter
    meets both an exact search and IVF; the rarest filters leave fewer than k in the probed partitions, and k=200
    more than they hold of any filter: both take the every-partition path."""
    monkeypatch.setattr(embedded_indexes, "VECTOR_INDEX_MIN_ROWS", 4_000)
    documents, vectors = corpus(13_000)  # three id ranges of a scan (facets): past its page twice
    store = EmbeddedStore(tmp_path / "store", "images")
    store.ensure_index(SMALL)
    for start in range(0, len(documents), 3_000):
        store.upsert(documents[start : start + 3_000])
    check_filters(store, documents, vectors, k=10, exact=True)  # no index yet: every search is exact
    check_facets(store, documents)

    store.optimize()
    table = store._open()
    indexed = {ix.columns[0]: ix.index_type for ix in table.list_indices()}
    assert indexed["vector"] == "IvfSq"
    for column, kind in embedded_indexes.FILTER_INDEXES.items():
        assert indexed[column].lower() == kind, indexed
    check_filters(store, documents, vectors, k=10, exact=False)
    check_filters(store, documents, vectors, k=200, exact=False)  # more than the probed partitions hold of a match

    # a hit is its document, read from one packed column; rows written before that column read their fields
    hits = store.search(vectors[5], 20)
    fields = store.get_many([hit.id for hit in hits])
    for hit in hits:
        expected = {key: v.isoformat() if isinstance(v, datetime) else v for key, v in fields[hit.id].items()}
        assert hit.document == expected
    table.update(values_sql={"hit": "NULL"}, where=f"id = '{hits[0].id}'")
    assert {hit.id: hit.document for hit in store.search(vectors[5], 20)}[hits[0].id] == fields[hits[0].id]
    assert "hit" not in store.get_many([hits[0].id])[hits[0].id] and "hit" not in store.get(hits[0].id)[0]


@pytest.mark.opensearch
def test_opensearch_filters_inside_the_knn_clause(opensearch_client, live_prefix: str) -> None:
    from imgvec.stores.opensearch import OpenSearchStore
    from imgvec.stores.opensearch_mapping import KnnIndexSettings

    documents, vectors = corpus(1_500)
    store = OpenSearchStore(opensearch_client, f"{live_prefix}-filters")
    store.ensure_index(SMALL, config=KnnIndexSettings(engine="lucene", shards=2, replicas=0))
    for start in range(0, len(documents), 500):
        store.upsert(documents[start : start + 500])
    store.optimize()
    mapping = store.mapping()["properties"]
    assert (mapping["location"]["type"], mapping["camera_model"]["type"]) == ("geo_point", "keyword")
    assert store.verify(SMALL) == []
    check_filters(store, documents, vectors, k=10, exact=False)
    check_filters(store, documents, vectors, k=200, exact=False)
    check_facets(store, documents)
    placed = next(i for i, document in enumerate(documents) if document.picture.latitude is not None)
    hit = store.search(vectors[placed], 1)[0]
    assert "location" not in hit.document and hit.document["latitude"] == documents[placed].picture.latitude

    # a document read before the camera and the place were: unfinished until read again
    stale = documents[1]
    opensearch_client.update(index=store.index, id=stale.id, body={"doc": {"picture_version": 1}}, refresh=True)
    assert [doc_id for doc_id, _ in store.documents(unfinished=True)] == [stale.id]
    assert store.lookup([stale.id])[stale.id].picture is None


# -- end to end: real files, the CLI ------------------------------------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    return camera_and_phone_photos(tmp_path / "photos")


def searched(env: dict[str, str], *flags: str) -> list[str]:
    run = run_cli(["search", "a photo", "-k", "10", "--json", *flags], env)
    assert run.returncode == 0, run.stderr
    return sorted(Path(hit["file_path"]).name for hit in json.loads(run.stdout))


def test_search_filters_from_the_command_line(cli_env: dict[str, str], photo_folder: Path) -> None:
    env = cli_env | {"IMGVEC_MODEL": "imgvec-tiny/random"}
    assert run_cli(["ingest", str(photo_folder)], env).returncode == 0
    assert searched(env) == ["newyork.heic", "paris.jpg", "scan.png", "sydney.jpg"]
    assert searched(env, "--camera", "CANON") == ["paris.jpg"]
    assert searched(env, "--camera", "apple iphone 12 pro", "--camera", "Samsung") == ["newyork.heic", "sydney.jpg"]
    assert searched(env, "--taken-from", "2019", "--taken-to", "2019") == ["paris.jpg", "sydney.jpg"]
    assert searched(env, "--taken-from", "2020-01-01") == ["newyork.heic"]
    assert searched(env, "--near", "48.8584,2.2945", "--within", "10") == ["paris.jpg"]
    assert searched(env, "--near", "48.8584,2.2945", "--within", "6000") == ["newyork.heic", "paris.jpg"]
    assert searched(env, "--near", "48.8584,2.2945", "--within", "6000", "--ext", "heic") == ["newyork.heic"]
    assert searched(env, "--taken-from", "2019", "--path-prefix", str(photo_folder / "trips")) == [
        "newyork.heic",
        "paris.jpg",
    ]
    shown = json.loads(run_cli(["search", "a photo", "--json", "--camera", "canon"], env).stdout)[0]
    assert (shown["camera_model"], shown["taken_at"]) == ("Canon EOS R5", "2019-05-01T10:00:00+00:00")
    assert shown["latitude"] == pytest.approx(PARIS[0], abs=1e-5)

    unknown = run_cli(["search", "a photo", "--camera", "Leica"], env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "'Leica'" in unknown.stderr and "Canon EOS R5" in unknown.stderr
    bad = run_cli(["search", "a photo", "--taken-from", "last year"], env)
    assert bad.returncode == 2 and "give a year (2019)" in bad.stderr and "Traceback" not in bad.stderr


def test_documents_read_before_the_camera_and_place_get_them_without_the_model(
    cli_env: dict[str, str], photo_folder: Path
) -> None:
    import lancedb

    env = cli_env | {"IMGVEC_MODEL": "imgvec-tiny/random"}
    assert run_cli(["ingest", str(photo_folder)], env).returncode == 0
    table = lancedb.connect(Path(env["IMGVEC_STORE"])).open_table("images")
    table.update(values_sql={"picture_version": "1", "camera_make": "NULL", "camera_model": "NULL"})
    assert searched(env, "--taken-from", "2000") == ["newyork.heic", "paris.jpg", "sydney.jpg"]
    filled = json.loads(run_cli(["ingest", str(photo_folder), "--json"], env).stdout)
    assert (filled["embedded"], filled["cache_hits"], filled["unchanged"]) == (0, 4, 0)  # read again, no model
    assert searched(env, "--camera", "canon") == ["paris.jpg"]
    assert json.loads(run_cli(["ingest", str(photo_folder), "--json"], env).stdout)["unchanged"] == 4


def search_requests(url: str) -> dict[str, float]:
    """The service's answered searches by status, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "imgvec_http_requests_total" and sample.labels.get("route") == "/api/search":
                counts[sample.labels["status"]] = counts.get(sample.labels["status"], 0) + sample.value
    return counts


def test_the_command_line_searches_through_a_running_service(cli_env: dict[str, str], photo_folder: Path) -> None:
    """`imgvec serve` says where it listens, beside the store; `imgvec search` asks it (text and a local image, the
    filters as given) and reports the service's refusals as its own; once it stops, the command searches alone."""
    import os

    from imgvec.settings import Settings

    env = cli_env | {"IMGVEC_MODEL": "imgvec-tiny/random"}
    assert run_cli(["ingest", str(photo_folder)], env).returncode == 0
    announcement = Settings(store=env["IMGVEC_STORE"]).state_dir / "serve" / "images.json"
    running = Service(env)
    try:
        assert json.loads(announcement.read_text())["url"] == running.url
        assert searched(env, "--camera", "canon", "--taken-from", "2019") == ["paris.jpg"]
        by_image = run_cli(["search", "--image", str(photo_folder / "sydney.jpg"), "--json", "-k", "2"], env)
        assert Path(json.loads(by_image.stdout)[0]["file_path"]).name == "sydney.jpg"
        unknown = run_cli(["search", "a photo", "--camera", "Leica"], env)
        assert unknown.returncode == 2 and "'Leica'" in unknown.stderr and "Traceback" not in unknown.stderr
        assert search_requests(running.url) == {"200": 2, "400": 1}  # all three answered by the service
    finally:
        running.stop()
    assert not announcement.exists()  # withdrawn when it stopped
    assert searched(env, "--camera", "canon") == ["paris.jpg"]  # by itself now

    announcement.write_text(
        json.dumps(
            {
                "url": "http://127.0.0.1:9",
                "pid": 2**22 + os.getpid(),
                "store": env["IMGVEC_STORE"],
                "index": "images",
                "model": env["IMGVEC_MODEL"],
            }
        )
    )
    assert searched(env, "--ext", "png") == ["scan.png"]  # a stale announcement is ignored, and removed
    assert not announcement.exists()


@pytest.mark.opensearch
def test_camera_and_phone_files_searched_by_filters_on_the_node(
    cli_env: dict[str, str], photo_folder: Path, opensearch_url: str, live_prefix: str
) -> None:
    """The same files and filters as on the embedded store, through the CLI into a live index: what the photos say
    reaches the node's typed fields, and each filter runs inside the k-NN clause there."""
    index = f"{live_prefix}-photos"
    env = cli_env | {"IMGVEC_MODEL": "imgvec-tiny/random", "IMGVEC_STORE": opensearch_url, "IMGVEC_INDEX": index}
    created = run_cli(["index", "create", index, "--engine", "lucene", "--shards", "1", "--replicas", "0"], env)
    assert created.returncode == 0, created.stderr
    ingested = run_cli(["ingest", str(photo_folder)], env)
    assert ingested.returncode == 0, ingested.stderr
    assert searched(env) == ["newyork.heic", "paris.jpg", "scan.png", "sydney.jpg"]
    assert searched(env, "--camera", "apple iphone 12 pro", "--camera", "CANON") == ["newyork.heic", "paris.jpg"]
    assert searched(env, "--taken-from", "2019", "--taken-to", "2019") == ["paris.jpg", "sydney.jpg"]
    assert searched(env, "--near", "48.8584,2.2945", "--within", "6000", "--ext", "heic") == ["newyork.heic"]
    assert searched(env, "--near", "-33.86,151.21", "--taken-from", "2019-12") == ["sydney.jpg"]
    shown = json.loads(run_cli(["search", "a photo", "--json", "--camera", "samsung"], env).stdout)[0]
    assert (shown["camera_make"], shown["taken_at"][:16]) == ("samsung", "2019-12-31T23:30")
    assert run_cli(["index", "verify", index], env).returncode == 0

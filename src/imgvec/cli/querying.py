"""Commands that read: search, duplicates, status, progress, failures, metrics."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from imgvec import wiring
from imgvec.cli.app import app
from imgvec.cli.base import command
from imgvec.cli.options import AsJson
from imgvec.cli.render import hint, out, print_json
from imgvec.errors import ImageDecodeError, SourceError, UsageError
from imgvec.settings import Settings
from imgvec.stores.base import SearchFilter

log = logging.getLogger(__name__)


@command(app)
def search(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="Find images like this one (a path or an s3:// URL).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=10_000, help="How many results.")] = 10,
    ext: Annotated[list[str] | None, typer.Option("--ext", help="Only these extensions (repeatable).")] = None,
    path_prefix: Annotated[str | None, typer.Option("--path-prefix", help="Only under this path.")] = None,
    taken_from: Annotated[
        str | None, typer.Option("--taken-from", help="Taken in or after this year, month or day (2019-07).")
    ] = None,
    taken_to: Annotated[
        str | None, typer.Option("--taken-to", help="Taken in or before this year, month or day (2019).")
    ] = None,
    camera: Annotated[
        list[str] | None, typer.Option("--camera", help="Taken with this camera: make or model (repeatable).")
    ] = None,
    near: Annotated[str | None, typer.Option("--near", help="Taken near LAT,LON (degrees).")] = None,
    within: Annotated[
        float | None, typer.Option("--within", help="Kilometres from --near (default 10).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Text → image (`imgvec search "a red car"`) or image → image (`--image query.jpg`), filtered by any of
    extension, folder, capture date, camera and place (all must hold)."""
    from imgvec.filters import build_filter, resolve_cameras
    from imgvec.search import hit_json, search_image, search_text
    from imgvec.sources import LocationReader

    settings: Settings = ctx.obj
    if (text is None) == (image is None):
        raise UsageError("give either a TEXT query or --image PATH (not both)")
    where = build_filter(
        extensions=ext or (),
        path_prefix=path_prefix,
        taken_from=taken_from,
        taken_to=taken_to,
        cameras=camera or (),
        near=near,
        within_km=within,
    )
    params = [("k", str(k)), *(("ext", e) for e in where.extensions), *(("camera", c) for c in camera or ())]
    given = {"path_prefix": path_prefix, "taken_from": taken_from, "taken_to": taken_to, "near": near}
    params += [(name, value) for name, value in given.items() if value]
    params += [("within", repr(within))] if within is not None else []
    answered = _through_service(settings, text, image, params)
    if answered is not None:
        _print_hits(answered, as_json)
        return
    began = time.monotonic()
    store = wiring.open_store(settings)
    store.stats()  # a missing index is reported before a model is loaded for nothing
    if where.cameras:
        where = resolve_cameras(where, store.facets(), store.index)
    embedder = wiring.embedder_for(settings, store)
    if image is not None:
        try:
            hits = search_image(store, embedder, image, k, where, reader=LocationReader(wiring.s3_connection(settings)))
        except (ImageDecodeError, OSError) as exc:
            raise SourceError(f"query image {image}: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        hits = search_text(store, embedder, text or "", k, where)
    _print_hits([hit_json(h) for h in hits], as_json)
    if time.monotonic() - began > SLOW_SEARCH_SECONDS:
        _suggest_serve(settings, time.monotonic() - began)


SLOW_SEARCH_SECONDS = 3.0
"""A search slower than this by itself (imports and model loading, mostly) suggests `imgvec serve`, once."""


def _through_service(
    settings: Settings, text: str | None, image: str | None, params: list[tuple[str, str]]
) -> list[dict[str, Any]] | None:
    """The hits from a running `imgvec serve` of this store and index (``service/announce.py``), or None when there
    is none, it cannot take this query (an image not on this machine), or it fails: then the command searches by
    itself. An error the service reports about the query itself (a bad filter, a missing index) is this command's."""
    from imgvec.service.announce import Unavailable, running_service

    local_image = Path(image) if image is not None and "://" not in image else None
    if image is not None and (local_image is None or not local_image.is_file()):
        return None  # an S3 object, or a path the command reports on itself
    service = running_service(settings)
    if service is None:
        return None
    try:
        return service.search([*([("q", text)] if text is not None else []), *params], local_image)
    except Unavailable as exc:
        log.info("the running service could not answer (%s): searching here", exc)
        return None


def _print_hits(hits: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(hits)
        return
    table = Table(box=None)
    table.add_column("#", justify="right")
    table.add_column("score")
    table.add_column("file", overflow="fold")  # a path is copied by users: wrap it, never cut it
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit['score']:.4f}", hit.get("file_path") or "")
    out.print(table)


def _suggest_serve(settings: Settings, seconds: float) -> None:
    """Once per store: the next slow search stays quiet (a marker in the state dir remembers)."""
    marker = settings.state_dir / "hints" / "serve-for-search"
    if marker.exists():
        return
    hint(
        f"this search took {seconds:.0f}s, mostly loading the model; while `imgvec serve` runs for this store, "
        "`imgvec search` answers through it in well under a second"
    )
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass


@command(app)
def duplicates(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="exact: the same bytes. resaved: the same picture re-encoded, resized, cropped or turned (exact "
            "copies too). similar: visually near by the model's vectors (bursts, a scene shot twice).",
        ),
    ] = "resaved",
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="resaved: bits apart, at most (default 8). similar: cosine, at least (0.95)."),
    ] = None,
    path_prefix: Annotated[str | None, typer.Option("--path-prefix", help="Only files under this path.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Show the first N groups only.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Every group as JSON, for a script that acts on them.")
    ] = False,
) -> None:
    """Groups of duplicates, largest saving first, each with the member to keep. Deletes and moves nothing."""
    from imgvec.cli.render import print_duplicates
    from imgvec.duplicates import find_duplicates

    settings: Settings = ctx.obj
    store = wiring.open_store(settings)
    store.stats()  # a missing index is one line, before any work
    found = find_duplicates(store, kind, threshold=threshold, where=SearchFilter(path_prefix=path_prefix))
    if as_json:
        print_json(found.as_dict(limit=limit))
        return
    print_duplicates(found, limit)


@command(app)
def status(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Documents in the index, with and without vectors, and the model that made them."""
    stats = wiring.open_store(ctx.obj).stats()
    _print_fields(stats.as_dict(), as_json, width=15)


@command(app)
def progress(
    ctx: typer.Context,
    state_file: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Read the state file a run keeps (--state-file s3://bucket/key.json), from any machine.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Where the latest ingest of the index stands; works from a second terminal while it runs."""
    if state_file is not None:
        from imgvec.pipeline.publishing.state_file import read_state

        found = read_state(state_file, wiring.s3_connection(ctx.obj))
        if as_json:
            print_json(found)
            return
        seed = {key: value for key, value in found.items() if key != "progress"}
        _print_fields({**seed, **found["progress"]}, False, width=19)
        return
    run_progress, _ = wiring.latest_run(ctx.obj)
    _print_fields(run_progress.as_dict(), as_json, width=14)


@command(app)
def failures(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Files that failed, with the stage and the reason; `ingest --retry-failed` tries them again."""
    records = wiring.journal_for(ctx.obj, create=False).failures()
    if as_json:
        print_json([record.record_dict() for record in records])
        return
    if not records:
        out.print("no failures")
    for record in records:
        out.print(f"[red]{record.stage}[/] {record.file_path}: {record.reason}", highlight=False)


@command(app)
def metrics(ctx: typer.Context) -> None:
    """The latest run's metrics in Prometheus text format (for a textfile collector or a scrape)."""
    from imgvec.pipeline.metrics import prometheus_text

    _, run_metrics = wiring.latest_run(ctx.obj)
    sys.stdout.write(prometheus_text(run_metrics, {"index": ctx.obj.index}))


def _print_fields(fields: dict[str, object], as_json: bool, *, width: int) -> None:
    if as_json:
        print_json(fields)
        return
    for key, value in fields.items():
        out.print(f"{key:>{width}}: {value}", highlight=False)

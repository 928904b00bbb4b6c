"""The `imgvec` command. Thin: it parses flags into Settings, calls the packages, and prints."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from imgvec.allocator import limit_heap_growth
from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS
from imgvec.embed.modelspec import DEFAULT_MODEL
from imgvec.embed.runtime import Precision, Runtime
from imgvec.errors import ImageDecodeError, ImgvecError
from imgvec.pipeline.estimate import LAMBDA_PRICE_GB_SECOND, LAMBDA_PRICE_PER_MILLION_REQUESTS
from imgvec.settings import DEFAULT_INDEX, DEFAULT_STORE, Settings
from imgvec.stores import KnnIndexOptions, SearchFilter, SearchHit, Store

if TYPE_CHECKING:
    from imgvec.pipeline.estimate import Estimate
    from imgvec.pipeline.ingest import Ingest, IngestOptions, IngestReport
    from imgvec.pipeline.lock import IndexLock
    from imgvec.pipeline.state import Progress as RunProgress
    from imgvec.pipeline.state import RunState
    from imgvec.pipeline.watch import Watcher
    from imgvec.sources.base import Source

EXIT_OK = 0
EXIT_ERROR = 1
"""A set-up problem stopped the run (bad store, model mismatch, unreadable source)."""
EXIT_USAGE = 2
"""Bad flags (Typer's own code)."""
EXIT_PARTIAL = 3
"""The run finished, but some files failed; they are listed with their reasons."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM: committed batches are kept; the same command continues."""

app = typer.Typer(
    help="Turn a large image collection into a searchable CLIP vector index.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


BatchSize = Annotated[
    int | None, typer.Option(min=1, max=4096, help="Images per model batch (default: 32 on a CPU, 256 on a GPU).")
]
Workers = Annotated[
    int | None,
    typer.Option(min=0, help="Decode worker processes (default: cores - 1, fewer if memory is short; 0 = in-process)."),
]
FullDecode = Annotated[
    bool,
    typer.Option(help="Decode every image at full size (the reference preprocessing; slower for large photos)."),
]
RateLimit = Annotated[float | None, typer.Option(min=0.001, help="At most this many files per second.")]
RetryFailed = Annotated[bool, typer.Option(help="Retry files that failed in an earlier run.")]
IoConcurrency = Annotated[
    int | None,
    typer.Option(min=0, max=512, help="Reads in flight (default: 8 for folders, 32 for S3; 0 = decode workers read)."),
]
MaxPixels = Annotated[int, typer.Option(min=1, help="Refuse larger images (decompression-bomb guard).")]
MaxDelete = Annotated[
    float,
    typer.Option(
        min=0,
        max=100,
        metavar="PERCENT",
        help="Refuse to delete more than this share of the source's documents in one pass (an unmounted share "
        "looks like every file deleted); 100 turns the guard off.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


@app.callback()
def main(
    ctx: typer.Context,
    store: Annotated[
        str,
        typer.Option(envvar="IMGVEC_STORE", help="A directory (embedded store) or http(s)://host:9200 (OpenSearch)."),
    ] = DEFAULT_STORE,
    index: Annotated[str, typer.Option(envvar="IMGVEC_INDEX", help="Index name.")] = DEFAULT_INDEX,
    model: Annotated[
        str | None,
        typer.Option(
            envvar="IMGVEC_MODEL",
            help=f"NAME/PRETRAINED, NAME/random, NAME//checkpoint.pt, hf-hub:ORG/REPO or local-dir:PATH. "
            f"Default: the index's own model, or {DEFAULT_MODEL} for a new index.",
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(envvar="IMGVEC_THREADS", min=1, help="Threads for inference.")] = None,
    device: Annotated[
        str, typer.Option(envvar="IMGVEC_DEVICE", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N.")
    ] = "auto",
    runtime: Annotated[
        Runtime | None,
        typer.Option(envvar="IMGVEC_RUNTIME", help="Image encoder runtime (default: onnx for int8, else torch)."),
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option(envvar="IMGVEC_PRECISION", help="auto: fp16 on a GPU, fp32 on a CPU; int8 runs through onnx."),
    ] = Precision.AUTO,
    model_config_dir: Annotated[
        str | None,
        typer.Option(envvar="IMGVEC_MODEL_CONFIG_DIR", help="Extra open_clip architecture configs (JSON)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(envvar="IMGVEC_CACHE_DIR", help="Where imgvec keeps generated weights (~/.cache/imgvec)."),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible server (MinIO, SeaweedFS, Ceph) for s3:// URLs."),
    ] = None,
    opensearch_user: Annotated[
        str | None, typer.Option(envvar="IMGVEC_OPENSEARCH_USER", help="OpenSearch basic-auth user.")
    ] = None,
    opensearch_password: Annotated[
        str | None, typer.Option(envvar="IMGVEC_OPENSEARCH_PASSWORD", help="OpenSearch basic-auth password.")
    ] = None,
    aws_service: Annotated[
        str | None,
        typer.Option(help="Sign OpenSearch requests with SigV4: es (managed domain) or aoss (Serverless)."),
    ] = None,
    aws_region: Annotated[
        str | None, typer.Option(envvar="AWS_REGION", help="Region for SigV4 (default: from the host name).")
    ] = None,
    ca_certs: Annotated[
        str | None, typer.Option(envvar="IMGVEC_OPENSEARCH_CA_CERTS", help="CA bundle for the cluster's certificate.")
    ] = None,
    verify_certs: Annotated[
        bool, typer.Option(envvar="IMGVEC_OPENSEARCH_VERIFY_CERTS", help="Check the cluster's TLS certificate.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose:
        # open_clip logs its own ERROR line before raising; our one-line message already says it better.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: "open_clip" not in record.pathname)
    warnings.showwarning = _show_warning
    # Lance's Rust side logs its own maintenance to stderr: e.g. "partition index is 21 but the number of partitions
    # is 7, skip loading it" each time an index optimize joins small IVF partitions, which is expected and harmless
    # (search results were checked). Errors still raise; LANCEDB_LOG=warn (or debug) brings the rest back.
    os.environ.setdefault("LANCEDB_LOG", "warn" if verbose else "error")
    limit_heap_growth()  # before the store's threads start: long runs stay flat (see allocator.py)
    ctx.obj = Settings(
        store=store,
        index=index,
        model=model,
        threads=threads,
        device=device,
        runtime=runtime.value if runtime else None,
        precision=precision.value,
        cache_dir=cache_dir,
        model_config_dir=model_config_dir,
        s3_endpoint_url=endpoint_url,
        opensearch_user=opensearch_user,
        opensearch_password=opensearch_password,
        aws_service=aws_service,
        aws_region=aws_region,
        verify_certs=verify_certs,
        ca_certs=ca_certs,
    )


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: object) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _embedder_for(settings: Settings, store: Store) -> Embedder:
    """The flag's model if given (checked against the index), else the index's own model."""
    identity = store.identity()
    model = settings.model or (identity.model if identity else DEFAULT_MODEL)
    embedder = settings.load_embedder(model)
    if identity is not None:
        identity.require_compatible(embedder.identity, action="use this index")
    return embedder


@app.command()
def ingest(
    ctx: typer.Context,
    source_location: Annotated[
        str | None,
        typer.Argument(metavar="[SOURCE]", help="A folder (indexed recursively) or s3://bucket/prefix."),
    ] = None,
    missing: Annotated[
        bool,
        typer.Option("--missing", help="Instead of SOURCE: fill in the index's documents that have no vector yet."),
    ] = False,
    batch_size: BatchSize = None,
    workers: Workers = None,
    max_files: Annotated[int | None, typer.Option(min=1, help="Stop after this many files.")] = None,
    rate_limit: RateLimit = None,
    retry_failed: RetryFailed = False,
    io_concurrency: IoConcurrency = None,
    dry_run: Annotated[bool, typer.Option(help="Show what would be processed and how long; write nothing.")] = False,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    full_decode: FullDecode = False,
    as_json: AsJson = False,
) -> None:
    """Index every image under SOURCE; unchanged files are skipped, and a stopped run continues where it was."""
    from imgvec.sources import open_source
    from imgvec.sources.index import IndexDocuments

    settings: Settings = ctx.obj
    if (source_location is None) == (not missing):
        raise _fail("give a SOURCE folder or s3:// URL, or --missing (not both)", EXIT_USAGE)
    remote = missing or (source_location or "").startswith("s3://")
    settings, options = _pipeline_options(
        settings,
        remote=remote,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        full_decode=full_decode,
        max_files=max_files,
        rate_limit=rate_limit,
        retry_failed=retry_failed,
        io_concurrency=io_concurrency,
    )
    try:
        store = settings.open_store()
        s3 = settings.s3_options(options.io_concurrency)
        if missing:
            if not store.exists():
                raise ImgvecError(f"no index {settings.index!r} in {settings.store} to fill")
            source: Source = IndexDocuments(store, s3)
        else:
            source = open_source(source_location or "", s3)
        if not dry_run:
            _refuse_if_busy(settings)  # before loading a model for nothing
        embedder = _embedder_for(settings, store)
        if dry_run:
            _dry_run(settings, source, store, embedder, options, as_json)
            return
        report = _run_ingest(settings, source, store, embedder, options, display=not as_json)
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:  # a second Ctrl-C: abort now; committed batches are still kept
        raise _fail(
            "aborted; committed batches are kept: run the same command again to continue", EXIT_INTERRUPTED
        ) from None

    _print_report(settings, report, as_json)
    if report.interrupted:
        raise _fail(
            "stopped; every batch committed so far is kept: run the same command again to continue", EXIT_INTERRUPTED
        )
    raise typer.Exit(EXIT_OK if report.ok else EXIT_PARTIAL)


def _print_report(settings: Settings, report: IngestReport, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    summary = {
        "seen": report.seen,
        "embedded": report.embedded,
        "cache_hits": report.cache_hits,
        "unchanged": report.unchanged,
        "known_failures": report.known_failures,
        "deleted": report.deleted,
        "moved": report.moved,
        "failed": len(report.failures),
        "interrupted": report.interrupted,
        "seconds": round(report.seconds, 3),
        "failures": [{"file_path": f.file_path, "stage": f.stage, "reason": f.reason} for f in report.failures],
        **(extra or {}),
    }
    if as_json:
        out.print_json(json.dumps(summary))
        return
    rate = (report.succeeded + len(report.failures)) / report.seconds if report.seconds else 0.0
    skipped = f"{report.unchanged} unchanged" + (
        f", {report.known_failures} failed before (--retry-failed)" if report.known_failures else ""
    )
    deleted = f"{report.deleted} deleted, " if report.deleted or extra else ""
    out.print(
        f"{report.embedded} embedded, {report.cache_hits} reused (identical bytes), {skipped}, {deleted}"
        f"{len(report.failures)} failed in {report.seconds:.1f}s ({rate:.1f} images/s) "
        f"→ index {settings.index!r} in {settings.store}",
        highlight=False,
    )
    for failure in report.failures[:20]:
        out.print(f"  [red]{failure.stage}[/] {failure.file_path}: {failure.reason}", highlight=False)
    if len(report.failures) > 20:
        out.print(f"  … and {len(report.failures) - 20} more: imgvec failures")


def _pipeline_options(
    settings: Settings,
    *,
    remote: bool,
    workers: int | None,
    batch_size: int | None,
    io_concurrency: int | None,
    **options: Any,
) -> tuple[Settings, IngestOptions]:
    from imgvec.pipeline.ingest import IngestOptions
    from imgvec.pipeline.tuning import tune

    try:
        tuning = tune(settings.runtime_choice(), workers=workers, threads=settings.threads, batch_size=batch_size)
    except ImgvecError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    settings = replace(settings, threads=tuning.threads)
    reads = io_concurrency if io_concurrency is not None else (32 if remote else 8)
    return settings, IngestOptions(
        workers=tuning.workers, batch_size=tuning.batch_size, io_concurrency=reads, **options
    )


def _run_ingest(
    settings: Settings, source: Source, store: Store, embedder: Embedder, options: IngestOptions, *, display: bool
) -> IngestReport:
    from imgvec.pipeline.ingest import Ingest

    state, lock = _run_state(settings)
    progress_display = _ProgressDisplay(enabled=display)
    run = Ingest(
        source,
        store,
        embedder,
        options,
        state=state,
        lock=lock,
        source_label=source.location,
        on_progress=progress_display.update,
    )
    with _stop_on_signals(run), progress_display:
        return run.run()


@app.command()
def sync(
    ctx: typer.Context,
    source_location: Annotated[str, typer.Argument(metavar="SOURCE", help="A folder or s3://bucket/prefix.")],
    max_delete: MaxDelete = 50.0,
    batch_size: BatchSize = None,
    workers: Workers = None,
    rate_limit: RateLimit = None,
    retry_failed: RetryFailed = False,
    io_concurrency: IoConcurrency = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    full_decode: FullDecode = False,
    dry_run: Annotated[bool, typer.Option(help="Show what would be indexed and deleted; write nothing.")] = False,
    as_json: AsJson = False,
) -> None:
    """One reconcile pass: index new and changed files, and delete the documents of files that are gone."""
    from imgvec.pipeline.ingest import Ingest
    from imgvec.pipeline.sync import SyncResult, reconcile
    from imgvec.sources import open_source

    settings, options = _pipeline_options(
        ctx.obj,
        remote=source_location.startswith("s3://"),
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        full_decode=full_decode,
        rate_limit=rate_limit,
        retry_failed=retry_failed,
        io_concurrency=io_concurrency,
    )
    try:
        store = settings.open_store()
        source = open_source(source_location, settings.s3_options(options.io_concurrency))
        _ = source.scope  # an unsyncable source fails here, before a model loads
        if not dry_run:
            _refuse_if_busy(settings)
        embedder = _embedder_for(settings, store)
        if dry_run:
            _sync_dry_run(settings, source, store, embedder, options, max_delete, as_json)
            return
        state, lock = _run_state(settings)
        display = _ProgressDisplay(enabled=not as_json)
        run = Ingest(
            source,
            store,
            embedder,
            options,
            state=state,
            lock=lock,
            source_label=f"sync {source.location}",
            on_progress=display.update,
        )
        result = SyncResult()
        with _stop_on_signals(run), display, run.session(), run.counting():
            result = reconcile(run, source, max_delete_percent=max_delete)
        report = run.report
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("aborted; committed batches are kept and nothing was deleted", EXIT_INTERRUPTED) from None
    _print_report(settings, report, as_json, {"sync": result.as_dict()})
    if report.interrupted:
        raise _fail("stopped; every batch committed so far is kept, nothing was deleted", EXIT_INTERRUPTED)
    if result.refused:
        raise _fail(result.refused)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_PARTIAL)


def _sync_dry_run(
    settings: Settings,
    source: Source,
    store: Store,
    embedder: Embedder,
    options: IngestOptions,
    max_delete: float,
    as_json: bool,
) -> None:
    from imgvec.pipeline.plan import plan
    from imgvec.pipeline.sync import count_stale

    result = plan(source, store, embedder, options, _existing_state(settings))
    stale = count_stale(source, store, max_delete_percent=max_delete)
    if as_json:
        out.print_json(json.dumps({**result.as_dict(), "sync": stale.as_dict()}))
        return
    out.print(
        f"would index {result.would_process} files ({result.would_process_bytes / 1e6:.1f} MB), "
        f"{result.unchanged} unchanged; would delete {stale.stale} of {stale.in_scope} documents from "
        f"{source.location}; nothing was written",
        highlight=False,
    )
    if stale.refused:
        err.print(f"[yellow]warning:[/] {stale.refused}", highlight=False)


@app.command()
def watch(
    ctx: typer.Context,
    folder: Annotated[str, typer.Argument(metavar="DIR", help="The folder to watch (recursively).")],
    settle: Annotated[
        str,
        typer.Option(metavar="DURATION", help="Handle a file once it has been quiet this long (a copy in progress)."),
    ] = "2s",
    reconcile_every: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Also run a full reconcile pass this often (1h, 30m): changes no "
            "event reported (network shares) are caught up.",
        ),
    ] = None,
    initial_sync: Annotated[
        bool, typer.Option(help="Reconcile at start, catching up on what changed while nothing watched.")
    ] = True,
    polling: Annotated[
        bool, typer.Option(help="Poll the tree instead of inotify (NFS/SMB shares changed by other machines).")
    ] = False,
    poll_interval: Annotated[str, typer.Option(metavar="DURATION", help="Seconds between polls.")] = "30s",
    max_delete: MaxDelete = 50.0,
    batch_size: BatchSize = None,
    workers: Workers = None,
    rate_limit: RateLimit = None,
    retry_failed: RetryFailed = False,
    io_concurrency: IoConcurrency = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    full_decode: FullDecode = False,
) -> None:
    """Keep the index in step with a folder: new, changed, moved and deleted files, until SIGTERM or Ctrl-C."""
    from imgvec.pipeline.ingest import Ingest
    from imgvec.pipeline.watch import Watcher, WatchOptions
    from imgvec.sources import LocalFolder

    try:
        watch_options = WatchOptions(
            settle_seconds=parse_duration(settle),
            reconcile_every=parse_duration(reconcile_every) if reconcile_every else None,
            initial_sync=initial_sync,
            polling=polling,
            poll_interval=parse_duration(poll_interval),
            max_delete_percent=max_delete,
        )
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    settings, options = _pipeline_options(
        ctx.obj,
        remote=False,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        full_decode=full_decode,
        rate_limit=rate_limit,
        retry_failed=retry_failed,
        io_concurrency=io_concurrency,
    )
    try:
        store = settings.open_store()
        source = LocalFolder(folder)
        _refuse_if_busy(settings)
        embedder = _embedder_for(settings, store)
        state, lock = _run_state(settings)
        run = Ingest(source, store, embedder, options, state=state, lock=lock, source_label=f"watch {source.location}")
        watcher = Watcher(source, run, watch_options, log=_log_line)
        _log_line(f"watching {source.location} → index {settings.index!r} in {settings.store}")
        with _stop_on_signals(watcher):
            watcher.run()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("aborted; committed batches are kept", EXIT_INTERRUPTED) from None
    report = run.report
    _log_line(
        f"stopped: {report.embedded} embedded, {report.cache_hits} reused, {report.moved} moved, "
        f"{report.deleted} deleted, {len(report.failures)} failed"
    )


def _log_line(message: str) -> None:
    """A service's log: one plain, timestamped line per event (journald and files read it as is)."""
    err.print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", highlight=False, markup=False)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``1h30m``, ``1d`` → seconds."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd]?)+", text.strip())
    if parts is None:
        raise ValueError(f"{text!r} is not a duration (like 30s, 15m, 1h, 1h30m)")
    seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip()))
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be more than zero")
    return seconds


def _refuse_if_busy(settings: Settings) -> None:
    from imgvec.pipeline.lock import IndexLock

    lock = IndexLock(settings.state_dir / f"{settings.index}.lock")
    if lock.is_held():
        lock.acquire()  # raises IndexBusyError with the holder's pid


def _run_state(settings: Settings, *, create: bool = True) -> tuple[RunState, IndexLock]:
    from imgvec.pipeline.lock import IndexLock
    from imgvec.pipeline.state import RunState

    state_path = settings.state_dir / f"{settings.index}.sqlite"
    if not create and not state_path.exists():
        raise ImgvecError(f"no ingest has run for index {settings.index!r} in {settings.store}")
    return RunState(state_path), IndexLock(settings.state_dir / f"{settings.index}.lock")


def _existing_state(settings: Settings) -> RunState | None:
    """The run state if an ingest ever ran (a dry run must not create one)."""
    if not (settings.state_dir / f"{settings.index}.sqlite").exists():
        return None
    return _run_state(settings, create=False)[0]


def _dry_run(
    settings: Settings, source: Source, store: Store, embedder: Embedder, options: IngestOptions, as_json: bool
) -> None:
    from imgvec.pipeline.plan import plan

    result = plan(source, store, embedder, options, _existing_state(settings))
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    estimate = "unknown" if result.estimated_seconds is None else _duration(result.estimated_seconds)
    out.print(
        f"would process {result.would_process} files ({result.would_process_bytes / 1e6:.1f} MB); "
        f"{result.unchanged} unchanged, {result.known_failures} failed before; "
        f"estimated {estimate} at {result.images_per_second or 0:.1f} images/s ({result.rate_basis}); "
        "nothing was written",
        highlight=False,
    )


@app.command()
def estimate(
    ctx: typer.Context,
    source_location: Annotated[str, typer.Argument(metavar="SOURCE", help="A folder or s3://bucket/prefix.")],
    sample: Annotated[
        int, typer.Option(min=8, max=10_000, help="Files in the calibration run (a random sample).")
    ] = 48,
    price_per_hour: Annotated[
        float | None, typer.Option(min=0, help="What this machine costs per hour, for a cost figure.")
    ] = None,
    lambda_seconds_per_image: Annotated[
        float | None,
        typer.Option(min=0.001, help="Per-image time of a serverless function (default: measured here, per core)."),
    ] = None,
    lambda_memory_gb: Annotated[float, typer.Option(min=0.125, max=10.24, help="Function memory.")] = 2.0,
    lambda_price_gb_second: Annotated[float, typer.Option(min=0)] = LAMBDA_PRICE_GB_SECOND,
    lambda_price_per_million_requests: Annotated[float, typer.Option(min=0)] = LAMBDA_PRICE_PER_MILLION_REQUESTS,
    lambda_images_per_request: Annotated[int, typer.Option(min=1, help="Images one invocation embeds.")] = 1,
    lambda_concurrency: Annotated[int, typer.Option(min=1, help="Invocations running at once.")] = 100,
    batch_size: BatchSize = None,
    workers: Workers = None,
    io_concurrency: IoConcurrency = None,
    full_decode: FullDecode = False,
    as_json: AsJson = False,
) -> None:
    """Count SOURCE's images and bytes, calibrate on a sample, and predict wall time and cost: on this machine,
    and on a per-image-time model such as AWS Lambda. Writes nothing to the index."""
    from imgvec.pipeline.estimate import PerImageModel
    from imgvec.pipeline.estimate import estimate as predict
    from imgvec.pipeline.plan import plan
    from imgvec.pipeline.tuning import cores
    from imgvec.sources import open_source

    remote = source_location.startswith("s3://")
    settings, options = _pipeline_options(
        ctx.obj,
        remote=remote,
        batch_size=batch_size,
        workers=workers,
        io_concurrency=io_concurrency,
        full_decode=full_decode,
    )
    try:
        store = settings.open_store()
        source = open_source(source_location, settings.s3_options(options.io_concurrency))
        embedder = _embedder_for(settings, store)
        counted = plan(source, store, embedder, options, None, sample_size=sample, prefer_last_run=False)
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    serverless = PerImageModel(
        seconds_per_image=lambda_seconds_per_image,
        memory_gb=lambda_memory_gb,
        price_gb_second=lambda_price_gb_second,
        price_per_million_requests=lambda_price_per_million_requests,
        images_per_request=lambda_images_per_request,
        concurrency=lambda_concurrency,
    )
    result = predict(counted, cores=cores(), price_per_hour=price_per_hour, serverless=serverless, s3_source=remote)
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    _print_estimate(result, embedder, options)


def _print_estimate(result: Estimate, embedder: Embedder, options: IngestOptions) -> None:
    found = result.plan
    out.print(
        f"images: {found.listed} ({found.listed_bytes / 1e9:.2f} GB); to embed: {found.would_process} "
        f"({found.would_process_bytes / 1e9:.2f} GB), {found.unchanged} already indexed, "
        f"{found.listing_errors} listing errors",
        highlight=False,
    )
    if not found.images_per_second:
        out.print("no rate: nothing to calibrate on (no image to embed, or none decodable)", highlight=False)
        return
    runtime = getattr(embedder, "runtime", None)
    out.print(
        f"calibration: {found.calibration_files} sampled files at {found.images_per_second:.2f} images/s "
        f"({runtime.describe() if runtime else 'model'}, decode workers: {options.workers}, "
        f"batch {options.batch_size})",
        highlight=False,
    )
    cost = f", {_money(result.machine_cost)} at the given hourly price" if result.machine_cost is not None else ""
    out.print(f"this machine ({result.cores} cores): {_duration(result.machine_seconds or 0)}{cost}", highlight=False)
    if result.per_image_seconds is not None:
        out.print(
            f"per-image model: {result.per_image_seconds:.2f} s/image ({result.per_image_basis}): "
            f"{_duration(result.serverless_seconds or 0)} at the given concurrency; compute "
            f"{_money(result.serverless_compute_cost or 0)}, requests {_money(result.serverless_request_cost or 0)}",
            highlight=False,
        )
    if result.s3_get_cost is not None:
        out.print(f"S3 GET requests: {_money(result.s3_get_cost)}", highlight=False)


def _money(amount: float) -> str:
    """Cents for big bills; small ones keep enough digits to compare (a 1,200-image test run costs $0.0072)."""
    return f"${amount:,.2f}" if amount >= 10 else f"${amount:.4f}"


@contextmanager
def _stop_on_signals(run: Ingest | Watcher) -> Iterator[None]:
    """Ctrl-C and SIGTERM finish the batch in hand, save state and exit cleanly; a second Ctrl-C aborts."""

    def stop(signum: int, _frame: object) -> None:
        if run.stopping:
            raise KeyboardInterrupt
        err.print(f"\n{signal.Signals(signum).name}: finishing the current batch, then stopping", highlight=False)
        run.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _ProgressDisplay:
    """A Rich progress bar in a terminal; a plain line every PLAIN_EVERY seconds otherwise (logs, CI)."""

    PLAIN_EVERY = 10.0

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = enabled and err.is_terminal
        self._last_plain = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressDisplay:
        if self.interactive:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("indexing", total=None, rate=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, progress: RunProgress) -> None:
        if not self.enabled:
            return
        description = f"{progress.succeeded} ok, {progress.failed} failed, {progress.skipped} skipped"
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=progress.processed,
                total=progress.total,
                description=description,
                rate=progress.rate,
            )
            return
        now = time.monotonic()
        if now - self._last_plain >= self.PLAIN_EVERY or progress.state != "running":
            self._last_plain = now
            total = "?" if progress.total is None else progress.total
            eta = "?" if progress.eta_seconds is None else _duration(progress.eta_seconds)
            err.print(
                f"{progress.processed}/{total} processed: {description}; {progress.rate:.1f} images/s, ETA {eta}",
                highlight=False,
            )


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _latest_run(settings: Settings) -> tuple[RunProgress, dict[str, Any]]:
    try:
        state, lock = _run_state(settings, create=False)
        latest = state.latest(lock)
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    if latest is None:
        raise _fail(f"no ingest has run for index {settings.index!r}")
    return latest


@app.command()
def progress(
    ctx: typer.Context,
    as_json: AsJson = False,
) -> None:
    """Where the latest ingest of the index stands; works from a second terminal while it runs."""
    run_progress, _ = _latest_run(ctx.obj)
    if as_json:
        out.print_json(json.dumps(run_progress.as_dict()))
        return
    for key, value in run_progress.as_dict().items():
        out.print(f"{key:>12}: {value}", highlight=False)


@app.command()
def failures(
    ctx: typer.Context,
    as_json: AsJson = False,
) -> None:
    """Files that failed, with the stage and the reason; `ingest --retry-failed` tries them again."""
    settings: Settings = ctx.obj
    try:
        records = _run_state(settings, create=False)[0].failures()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps([r.as_dict() for r in records]))
        return
    if not records:
        out.print("no failures")
    for record in records:
        out.print(f"[red]{record.stage}[/] {record.file_path}: {record.reason}", highlight=False)


@app.command()
def metrics(ctx: typer.Context) -> None:
    """The latest run's metrics in Prometheus text format (for a textfile collector or a scrape)."""
    from imgvec.pipeline.metrics import prometheus_text

    settings: Settings = ctx.obj
    _, run_metrics = _latest_run(settings)
    sys.stdout.write(prometheus_text(run_metrics, {"index": settings.index}))


@app.command()
def search(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="Find images like this one (a path or an s3:// URL).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=10_000, help="How many results.")] = 10,
    ext: Annotated[list[str] | None, typer.Option("--ext", help="Only these extensions (repeatable).")] = None,
    path_prefix: Annotated[str | None, typer.Option("--path-prefix", help="Only under this path.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Text → image (`imgvec search "a red car"`) or image → image (`--image query.jpg`)."""
    from imgvec.search import search_image, search_text
    from imgvec.sources import LocationReader

    settings: Settings = ctx.obj
    if (text is None) == (image is None):
        raise _fail("give either a TEXT query or --image PATH (not both)", EXIT_USAGE)
    where = SearchFilter(extensions=tuple(ext or ()), path_prefix=path_prefix)
    try:
        store = settings.open_store()
        store.stats()  # a missing index is reported before a model is loaded for nothing
        embedder = _embedder_for(settings, store)
        if image is not None:
            reader = LocationReader(settings.s3_options())
            hits = search_image(store, embedder, image, k, where, reader=reader)
        else:
            hits = search_text(store, embedder, text or "", k, where)
    except ImageDecodeError as exc:
        raise _fail(f"query image {image}: {exc}") from None
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps([_hit_json(h) for h in hits]))
        return
    table = Table(box=None)
    table.add_column("#", justify="right")
    table.add_column("score")
    table.add_column("file", overflow="fold")  # a path is copied by users: wrap it, never cut it
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.4f}", hit.document.get("file_path") or "")
    out.print(table)


def _hit_json(hit: SearchHit) -> dict[str, Any]:
    doc = dict(hit.document)
    if doc.get("indexed_at") is not None:
        doc["indexed_at"] = doc["indexed_at"].isoformat()
    return {"file_path": doc.get("file_path"), "score": hit.score, **doc}


@app.command()
def status(
    ctx: typer.Context,
    as_json: AsJson = False,
) -> None:
    """Documents in the index, with and without vectors, and the model that made them."""
    settings: Settings = ctx.obj
    try:
        stats = settings.open_store().stats()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(stats.as_dict()))
        return
    for key, value in stats.as_dict().items():
        out.print(f"{key:>15}: {value}", highlight=False)


index_app = typer.Typer(help="Create and check k-NN indexes.", no_args_is_help=True)
alias_app = typer.Typer(help="Show and roll back aliases.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(alias_app, name="alias")

EngineOption = Annotated[str, typer.Option(help="k-NN engine: faiss (default), lucene, or nmslib (clusters < 2.19).")]
ShardsOption = Annotated[int, typer.Option(min=1, help="Primary shards (ignored by Serverless).")]
ReplicasOption = Annotated[int, typer.Option(min=0, help="Replicas (ignored by Serverless).")]
MOption = Annotated[int, typer.Option("--m", min=2, max=100, help="HNSW links per node.")]
EfConstructionOption = Annotated[int, typer.Option(min=2, help="HNSW candidate list while building.")]
EfSearchOption = Annotated[int, typer.Option(min=2, help="HNSW candidate list while searching.")]


@index_app.command("create")
def index_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new index.")],
    dimension: Annotated[
        int | None, typer.Option(min=1, help="Must equal the model's output (512 for ViT-B-32); checked.")
    ] = None,
    shards: ShardsOption = 2,
    replicas: ReplicasOption = 1,
    engine: EngineOption = "faiss",
    m: MOption = 16,
    ef_construction: EfConstructionOption = 128,
    ef_search: EfSearchOption = 100,
) -> None:
    """A k-NN index for the model's vectors (HNSW, cosine), with the model identity recorded in it."""
    settings: Settings = ctx.obj
    try:
        options = KnnIndexOptions(shards, replicas, engine, m, ef_construction, ef_search)
        store = settings.open_store(name)
        if store.exists():
            raise ImgvecError(f"index {name!r} already exists: `imgvec index verify {name}` checks it")
        embedder = settings.load_embedder(settings.model or DEFAULT_MODEL)
        if dimension is not None:
            embedder.identity.require_dimension(dimension)
        store.ensure_index(embedder.identity, options)
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    out.print(f"created {name!r} for {embedder.identity.describe()} in {_store_label(settings)}", highlight=False)


@index_app.command("verify")
def index_verify(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The index (or alias) to check.")],
    as_json: AsJson = False,
) -> None:
    """Check the live index against what imgvec needs (field type, dimension, space, engine, model); exit 1 if not."""
    settings: Settings = ctx.obj
    try:
        store = settings.open_store(name)
        expected = settings.load_embedder(settings.model).identity if settings.model else None
        problems = store.verify(expected)
        stats = store.stats()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps({"index": name, "ok": not problems, "problems": problems, **stats.as_dict()}))
    else:
        for problem in problems:
            out.print(f"[red]✗[/] {problem}", highlight=False)
        if not problems:
            out.print(f"[green]✓[/] {name}: {stats.dimension}-dim, model {stats.model}", highlight=False)
        out.print(f"{stats.documents} documents, {stats.with_vector} with a vector", highlight=False)
    raise typer.Exit(EXIT_ERROR if problems else EXIT_OK)


@app.command()
def migrate(
    ctx: typer.Context,
    source_index: Annotated[str, typer.Option("--from", help="The index to copy documents from.")],
    target_index: Annotated[str, typer.Option("--to", help="The new index (created if missing).")],
    alias: Annotated[str, typer.Option(help="Switched to the new index once it is complete.")],
    shards: ShardsOption = 2,
    replicas: ReplicasOption = 1,
    engine: EngineOption = "faiss",
    m: MOption = 16,
    ef_construction: EfConstructionOption = 128,
    ef_search: EfSearchOption = 100,
    batch_size: BatchSize = None,
    workers: Workers = None,
    io_concurrency: IoConcurrency = None,
    as_json: AsJson = False,
) -> None:
    """Copy --from into a new index without its vectors, fill them with the model, switch --alias atomically.

    Run the same command again to resume; `imgvec alias rollback ALIAS` switches back."""
    from imgvec.pipeline.migrate import migrate as run_migration
    from imgvec.sources.index import IndexDocuments
    from imgvec.stores import open_aliases

    settings, options = _pipeline_options(
        ctx.obj, remote=True, workers=workers, batch_size=batch_size, io_concurrency=io_concurrency
    )
    fill_settings = replace(settings, index=target_index)
    try:
        index_options = KnnIndexOptions(shards, replicas, engine, m, ef_construction, ef_search)
        source = settings.open_store(source_index)
        target = settings.open_store(target_index)
        aliases = open_aliases(settings.store, settings.opensearch_options())
        _refuse_if_busy(fill_settings)
        target_identity = target.identity() if target.exists() else None
        model = settings.model or (target_identity.model if target_identity else DEFAULT_MODEL)
        embedder = settings.load_embedder(model)

        def fill() -> IngestReport:
            documents = IndexDocuments(target, settings.s3_options(options.io_concurrency))
            return _run_ingest(fill_settings, documents, target, embedder, options, display=not as_json)

        def step(text: str) -> None:
            if not as_json:
                err.print(text, highlight=False)

        report = run_migration(source, target, aliases, alias, embedder.identity, fill, index_options, step)
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("aborted; run the same command again to continue", EXIT_INTERRUPTED) from None
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        out.print(
            f"{alias!r} now points to {target_index!r} ({report.target_stats.with_vector if report.target_stats else 0}"
            f" documents with vectors); the old index {source_index!r} is kept",
            highlight=False,
        )


@alias_app.command("show")
def alias_show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The alias.")]) -> None:
    """The index an alias points to, and the one it was migrated from."""
    from imgvec.stores import open_aliases

    settings: Settings = ctx.obj
    try:
        target = open_aliases(settings.store, settings.opensearch_options()).target(name)
        if target is None:
            raise ImgvecError(f"no alias {name!r}")
        origin = settings.open_store(target).origin()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{name} → {target}" + (f" (migrated from {origin})" if origin else ""), highlight=False)


@alias_app.command("rollback")
def alias_rollback(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The alias.")]) -> None:
    """Point the alias back at the index its current index was migrated from (kept by `imgvec migrate`)."""
    from imgvec.pipeline.migrate import rollback
    from imgvec.stores import open_aliases

    settings: Settings = ctx.obj
    try:
        aliases = open_aliases(settings.store, settings.opensearch_options())
        current, origin = rollback(aliases, name, settings.open_store)
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{name} → {origin} (was {current}, which is kept)", highlight=False)


def _store_label(settings: Settings) -> str:
    from imgvec.stores import is_remote

    return settings.opensearch_options().safe_url() if is_remote(settings.store) else settings.store


if __name__ == "__main__":  # pragma: no cover
    app()

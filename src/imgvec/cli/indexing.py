"""Commands that index: ingest, sync, watch, estimate."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from imgvec import wiring
from imgvec.cli.app import app
from imgvec.cli.base import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, command
from imgvec.cli.options import EXECUTING, RUNNING, TUNING, AsJson, MaxDelete, parse_duration
from imgvec.cli.render import (
    ProgressDisplay,
    fail,
    format_estimate,
    format_plan,
    format_sync_plan,
    log_line,
    print_json,
    print_lines,
    print_report,
    step,
    warn,
)
from imgvec.errors import UsageError
from imgvec.pipeline.estimate import LAMBDA_PRICE_GB_SECOND, LAMBDA_PRICE_PER_MILLION_REQUESTS
from imgvec.settings import Settings
from imgvec.sources import is_s3_location
from imgvec.wiring import PipelineFlags

if TYPE_CHECKING:
    from imgvec.pipeline.plan import Plan

SourceLocation = Annotated[str, typer.Argument(metavar="SOURCE", help="A folder or s3://bucket/prefix.")]


@command(app, pipeline=(*RUNNING, "max_files", *EXECUTING))
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
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="With --missing: keep running, filling documents as their writer adds them (a service)."
        ),
    ] = False,
    interval: Annotated[str, typer.Option(metavar="DURATION", help="With --follow: time between passes.")] = "30s",
    dry_run: Annotated[bool, typer.Option(help="Show what would be processed and how long; write nothing.")] = False,
    as_json: AsJson = False,
    *,
    pipeline: PipelineFlags,
) -> None:
    """Index every image under SOURCE; unchanged files are skipped, and a stopped run continues where it was."""
    if (source_location is None) == (not missing):
        raise UsageError("give a SOURCE folder or s3:// URL, or --missing (not both)")
    if follow and (not missing or dry_run):
        raise UsageError("--follow goes with --missing and without --dry-run (a folder is followed by `imgvec watch`)")
    setup = wiring.prepare_run(
        ctx.obj, pipeline, source=source_location, missing=missing, mode="dry_run" if dry_run else "write"
    )
    if dry_run:
        result = _plan(setup)
        if as_json:
            print_json(result.as_dict())
        else:
            print_lines([format_plan(result)])
        return
    if follow:
        _follow(setup, interval)
        return
    display = ProgressDisplay(enabled=not as_json)
    run = setup.indexer(on_progress=display.update)
    with wiring.stop_on_signals(run, step), display:
        report = run.run()
    print_report(report, _destination(setup.settings), as_json)
    if report.interrupted:
        raise fail(
            "stopped; every batch committed so far is kept: run the same command again to continue", EXIT_INTERRUPTED
        )
    raise typer.Exit(EXIT_OK if report.ok else EXIT_PARTIAL)


@command(app, pipeline=(*RUNNING, *EXECUTING), aborted="aborted; committed batches are kept and nothing was deleted")
def sync(
    ctx: typer.Context,
    source_location: SourceLocation,
    max_delete: MaxDelete = 50.0,
    dry_run: Annotated[bool, typer.Option(help="Show what would be indexed and deleted; write nothing.")] = False,
    as_json: AsJson = False,
    *,
    pipeline: PipelineFlags,
) -> None:
    """One reconcile pass: index new and changed files, and delete the documents of files that are gone."""
    from imgvec.pipeline.sync import count_stale, reconcile

    setup = wiring.prepare_run(
        ctx.obj, pipeline, source=source_location, mode="dry_run" if dry_run else "write", reconcile=True
    )
    source = setup.source
    assert source is not None
    if dry_run:
        result = _plan(setup)
        stale = count_stale(source, setup.store, max_delete_percent=max_delete)
        if as_json:
            print_json({**result.as_dict(), "sync": stale.as_dict()})
            return
        print_lines([format_sync_plan(result, stale, source.location)])
        if stale.refused:
            warn(stale.refused)
        return
    display = ProgressDisplay(enabled=not as_json)
    run = setup.indexer(label=f"sync {source.location}", on_progress=display.update)
    with wiring.stop_on_signals(run, step), display, run.session(), run.counting():
        result = reconcile(run, source, max_delete_percent=max_delete)
    print_report(run.report, _destination(setup.settings), as_json, sync=result)
    if run.report.interrupted:
        raise fail("stopped; every batch committed so far is kept, nothing was deleted", EXIT_INTERRUPTED)
    if result.refused:
        raise fail(result.refused, EXIT_ERROR)
    raise typer.Exit(EXIT_OK if run.report.ok else EXIT_PARTIAL)


@command(app, pipeline=RUNNING, aborted="aborted; committed batches are kept")
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
    *,
    pipeline: PipelineFlags,
) -> None:
    """Keep the index in step with a folder: new, changed, moved and deleted files, until SIGTERM or Ctrl-C."""
    from imgvec.pipeline.continuous.watch import Watcher, WatchOptions

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
        raise UsageError(str(exc)) from None
    setup = wiring.prepare_run(ctx.obj, pipeline, source=folder, folder=True)
    source = setup.source
    assert source is not None
    run = setup.indexer(label=f"watch {source.location}")
    watcher = Watcher(source, run, watch_options, log=log_line)
    log_line(f"watching {source.location} → {_destination(setup.settings)}")
    with wiring.stop_on_signals(watcher, step):
        watcher.run()
    report = run.report
    log_line(
        f"stopped: {report.embedded} embedded, {report.cache_hits} reused, {report.moved} moved, "
        f"{report.deleted} deleted, {report.failed} failed"
    )


@command(app, pipeline=(*TUNING, "follow_external", "executor", "lambda_function", "lambda_endpoint"))
def estimate(
    ctx: typer.Context,
    source_location: SourceLocation,
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
    as_json: AsJson = False,
    *,
    pipeline: PipelineFlags,
) -> None:
    """Count SOURCE's images and bytes, calibrate on a sample, and predict wall time and cost: on this machine,
    and on a per-image-time model such as AWS Lambda (--executor lambda --lambda-function NAME: the sample goes
    through the function, whose own time per image is the model's). Writes nothing to the index."""
    from imgvec.pipeline.estimate import PerImageModel
    from imgvec.pipeline.estimate import estimate as predict
    from imgvec.pipeline.plan import plan
    from imgvec.pipeline.tuning import cores

    setup = wiring.prepare_run(ctx.obj, pipeline, source=source_location, mode="measure")
    embedder, options = setup.model, setup.options
    assert setup.source is not None
    if options.executor == "ray":
        raise UsageError("estimate calibrates here or through a Lambda function: --executor local or lambda")
    if options.executor == "lambda":  # the calibration invokes as the modelled run would
        options = replace(options, lambda_batch_size=lambda_images_per_request, lambda_concurrency=lambda_concurrency)
    counted = plan(
        setup.source,
        setup.store,
        embedder,
        options,
        None,
        scratch_store=wiring.scratch_store,
        sample_size=sample,
        prefer_last_run=False,
        executor=wiring.executor_for(setup.settings, options, embedder),
    )
    serverless = PerImageModel(
        seconds_per_image=lambda_seconds_per_image,
        memory_gb=lambda_memory_gb,
        price_gb_second=lambda_price_gb_second,
        price_per_million_requests=lambda_price_per_million_requests,
        images_per_request=lambda_images_per_request,
        concurrency=lambda_concurrency,
    )
    result = predict(
        counted,
        cores=cores(),
        price_per_hour=price_per_hour,
        serverless=serverless,
        s3_source=is_s3_location(source_location),
    )
    if as_json:
        runtime = {"runtime": embedder.runtime.describe(), "runtime_reason": embedder.runtime.reason}
        print_json(result.as_dict() | runtime | {"decode_workers": options.workers})
        return
    print_lines(format_estimate(result, embedder.runtime, options))


def _plan(setup: wiring.RunSetup) -> Plan:
    """A dry run's plan: what would be processed, and how long (when the model could load)."""
    from imgvec.pipeline.plan import plan

    assert setup.source is not None
    journal = wiring.existing_journal(setup.settings)
    result = plan(setup.source, setup.store, setup.embedder, setup.options, journal, scratch_store=wiring.scratch_store)
    result.model_unavailable = setup.model_unavailable
    return result


def _follow(setup: wiring.RunSetup, interval: str) -> None:
    """A service's loop: log lines, not a progress bar; SIGTERM drains and exits 0."""
    from imgvec.pipeline.continuous.follow import Follower, FollowOptions

    try:
        options = FollowOptions(interval=parse_duration(interval))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    source, run = setup.source, setup.indexer()
    assert source is not None
    follower = Follower(source, run, options, log=log_line)
    log_line(f"following {source.location} every {options.interval:g}s → {_destination(setup.settings)}")
    with wiring.stop_on_signals(follower, step):
        follower.run()
    report = run.report
    log_line(f"stopped: {report.succeeded} filled, {report.failed} failed")


def _destination(settings: Settings) -> str:
    return f"index {settings.index!r} in {settings.store}"

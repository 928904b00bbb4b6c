"""What the user sees: reports, plans, estimates, the progress bar, durations and money.

``format_*`` functions return text and touch no console (tests and other front ends can use them); the few
``print_*`` functions and ``ProgressDisplay`` write it, results to stdout and everything else to stderr.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from imgvec.duplicates import Duplicates
    from imgvec.embed.runtime import RuntimeChoice
    from imgvec.pipeline.estimate import Estimate
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.pipeline.plan import Plan
    from imgvec.pipeline.report import Progress as RunProgress
    from imgvec.pipeline.report import RunReport
    from imgvec.pipeline.sync import SyncResult

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
FAILURES_SHOWN = 20


def fail(message: str, code: int) -> typer.Exit:
    """Print one error line; the caller raises what this returns."""
    err.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


def hint(message: str) -> None:
    """Advice, not a problem: on stderr, so a script reading stdout never sees it."""
    err.print(f"[cyan]tip:[/] {message}", highlight=False)


def print_json(value: Any) -> None:
    out.print_json(json.dumps(value))


def log_line(message: str) -> None:
    """A service's log: one plain, timestamped line per event (journald and files read it as is)."""
    err.print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", highlight=False, markup=False)


def step(message: str) -> None:
    err.print(message, highlight=False)


# -- reports ----------------------------------------------------------------------------------------


def format_report(report: RunReport, destination: str, *, deletions: bool = False) -> list[str]:
    """The summary line, then the first failures (Rich markup). ``deletions``: say how many were deleted, even 0."""
    rate = (report.succeeded + report.failed) / report.seconds if report.seconds else 0.0
    skipped = f"{report.unchanged} unchanged" + (
        f", {report.known_failures} failed before (--retry-failed)" if report.known_failures else ""
    )
    deleted = f"{report.deleted} deleted, " if report.deleted or deletions else ""
    lines = [
        f"{report.embedded} embedded, {report.cache_hits} reused (identical bytes), {skipped}, {deleted}"
        f"{report.failed} failed in {report.seconds:.1f}s ({rate:.1f} images/s) → {destination}"
    ]
    lines += [f"  [red]{f.stage}[/] {f.file_path}: {f.reason}" for f in report.failures[:FAILURES_SHOWN]]
    if report.failed > FAILURES_SHOWN:
        lines.append(f"  … and {report.failed - FAILURES_SHOWN} more: imgvec failures")
    return lines


def print_report(report: RunReport, destination: str, as_json: bool, sync: SyncResult | None = None) -> None:
    if as_json:
        print_json(report.as_dict() | ({"sync": sync.as_dict()} if sync is not None else {}))
        return
    for line in format_report(report, destination, deletions=sync is not None):
        out.print(line, highlight=False)


def format_plan(plan: Plan) -> str:
    estimate = "unknown" if plan.estimated_seconds is None else format_duration(plan.estimated_seconds)
    timing = f"estimated {estimate} at {plan.images_per_second or 0:.1f} images/s ({plan.rate_basis})"
    if plan.model_unavailable and plan.estimated_seconds is None:
        timing = f"time unknown: it is measured with the model, which cannot load here ({plan.model_unavailable})"
    return (
        f"would process {plan.would_process} files ({plan.would_process_bytes / 1e6:.1f} MB); "
        f"{plan.unchanged} unchanged, {plan.known_failures} failed before; {timing}; nothing was written"
    )


def format_sync_plan(plan: Plan, stale: SyncResult, location: str) -> str:
    unknown = f" (the model cannot load here: {plan.model_unavailable})" if plan.model_unavailable else ""
    return (
        f"would index {plan.would_process} files ({plan.would_process_bytes / 1e6:.1f} MB), "
        f"{plan.unchanged} unchanged{unknown}; would delete {stale.stale} of {stale.in_scope} documents from "
        f"{location}; nothing was written"
    )


def format_estimate(result: Estimate, runtime: RuntimeChoice, options: PipelineOptions) -> list[str]:
    found = result.plan
    lines = [
        f"images: {found.listed} ({found.listed_bytes / 1e9:.2f} GB); to embed: {found.would_process} "
        f"({found.would_process_bytes / 1e9:.2f} GB), {found.unchanged} already indexed, "
        f"{found.listing_errors} listing errors",
        f"runtime: {runtime.describe()} ({runtime.reason or 'asked for by name'})",
    ]
    if not found.images_per_second:
        return [*lines, "no rate: nothing to calibrate on (no image to embed, or none decodable)"]
    lines.append(
        f"calibration: {found.calibration_files} sampled files at {found.images_per_second:.2f} images/s "
        f"({runtime.runtime.value} {runtime.precision.value}, decode workers: {options.workers}, "
        f"batch {options.batch_size})"
    )
    cost = f", {format_money(result.machine_cost)} at the given hourly price" if result.machine_cost is not None else ""
    lines.append(f"this machine ({result.cores} cores): {format_duration(result.machine_seconds or 0)}{cost}")
    if result.per_image_seconds is not None:
        lines.append(
            f"per-image model: {result.per_image_seconds:.2f} s/image ({result.per_image_basis}): "
            f"{format_duration(result.serverless_seconds or 0)} at the given concurrency; compute "
            f"{format_money(result.serverless_compute_cost or 0)}, "
            f"requests {format_money(result.serverless_request_cost or 0)}"
        )
    if result.s3_get_cost is not None:
        lines.append(f"S3 GET requests: {format_money(result.s3_get_cost)}")
    return lines


def print_lines(lines: list[str]) -> None:
    for line in lines:
        out.print(line, highlight=False)


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_money(amount: float) -> str:
    """Cents for big bills; small ones keep enough digits to compare test runs."""
    return f"${amount:,.2f}" if amount >= 10 else f"${amount:.4f}"


def format_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - the loop returns at GB


def format_duplicates(found: Duplicates, limit: int | None) -> list[str]:
    """Each group: its saving, then its members, the keeper marked; a summary line first."""
    threshold = "" if found.threshold is None else f" (threshold {found.threshold:g})"
    lines = [
        f"{len(found)} groups of {found.kind} duplicates{threshold} among {found.documents} documents; "
        f"deleting all but the keeper of each would free {format_size(found.total_saving)}"
    ]
    if found.random_weights:
        lines.append("note: the model has random weights: 'similar' groups say nothing about the pictures")
    if found.unhashed:
        lines.append(
            f"note: {found.unhashed} documents have no perceptual hash yet (indexed by an older imgvec): "
            "`imgvec ingest` again over their folder (or `--missing`) fills it in"
        )
    for number, group in enumerate(found.page(0, limit), 1):
        lines.append(f"\n#{number}  {len(group.members)} files, frees {format_size(group.saving)}")
        for member in group.members:
            mark = "keep" if member is group.keeper else "    "
            size = f"{member.width}x{member.height}" if member.width else "?x?"
            taken = member.taken_at.strftime("%Y-%m-%d %H:%M") if member.taken_at else "-"
            score = "" if member.score is None else f"  [{member.score:g}]"
            size_text = format_size(member.file_size)
            lines.append(f"  {mark} {size_text:>9} {size:>11} {taken:>16}  {member.file_path}{score}")
    if limit is not None and len(found) > limit:
        lines.append(f"\n... {len(found) - limit} more groups (--limit, or --json for all)")
    return lines


def print_duplicates(found: Duplicates, limit: int | None) -> None:
    print_lines(format_duplicates(found, limit))


# -- progress ---------------------------------------------------------------------------------------


def format_progress(progress: RunProgress) -> str:
    total = "?" if progress.total is None else progress.total
    eta = "?" if progress.eta_seconds is None else format_duration(progress.eta_seconds)
    unlisted = f", {progress.listing_failures} not listed" if progress.listing_failures else ""
    return (  # ok + failed + skipped = processed; what the listing could not take is said apart
        f"{progress.processed}/{total} processed: {progress.succeeded} ok, "
        f"{progress.failed - progress.listing_failures} failed, {progress.skipped} skipped{unlisted}; "
        f"{progress.rate:.1f} images/s, ETA {eta}"
    )


class ProgressDisplay:
    """A Rich progress bar in a terminal; a plain line every PLAIN_EVERY seconds otherwise (logs, CI)."""

    PLAIN_EVERY = 10.0

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = enabled and err.is_terminal
        self._last_plain = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
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
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=progress.processed,
                total=progress.total,
                description=f"{progress.succeeded} ok, {progress.failed} failed, {progress.skipped} skipped",
                rate=progress.rate,
            )
            return
        now = time.monotonic()
        if now - self._last_plain >= self.PLAIN_EVERY or progress.state != "running":
            self._last_plain = now
            err.print(format_progress(progress), highlight=False)

"""The `imgvec` command. Thin: it parses flags into Settings, calls the packages, and prints."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS
from imgvec.embed.modelspec import DEFAULT_MODEL
from imgvec.errors import ImageDecodeError, ImgvecError
from imgvec.settings import DEFAULT_INDEX, DEFAULT_STORE, Settings
from imgvec.stores import SearchFilter, SearchHit, Store, open_store

EXIT_OK = 0
EXIT_ERROR = 1
"""A set-up problem stopped the run (bad store, model mismatch, unreadable source)."""
EXIT_USAGE = 2
"""Bad flags (Typer's own code)."""
EXIT_PARTIAL = 3
"""The run finished, but some files failed; they are listed with their reasons."""
EXIT_INTERRUPTED = 130
"""Ctrl-C: committed batches are kept; the same command continues."""

app = typer.Typer(
    help="Turn a large image collection into a searchable CLIP vector index.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def main(
    ctx: typer.Context,
    store: Annotated[str, typer.Option(envvar="IMGVEC_STORE", help="A directory (embedded store).")] = DEFAULT_STORE,
    index: Annotated[str, typer.Option(envvar="IMGVEC_INDEX", help="Index name.")] = DEFAULT_INDEX,
    model: Annotated[
        str | None,
        typer.Option(
            envvar="IMGVEC_MODEL",
            help=f"NAME/PRETRAINED, NAME/random, NAME//checkpoint.pt, hf-hub:ORG/REPO or local-dir:PATH. "
            f"Default: the index's own model, or {DEFAULT_MODEL} for a new index.",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(envvar="IMGVEC_THREADS", min=1, help="Torch threads for inference.")
    ] = None,
    model_config_dir: Annotated[
        str | None,
        typer.Option(envvar="IMGVEC_MODEL_CONFIG_DIR", help="Extra open_clip architecture configs (JSON)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(envvar="IMGVEC_CACHE_DIR", help="Where imgvec keeps generated weights (~/.cache/imgvec)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose:
        # open_clip logs its own ERROR line before raising; our one-line message already says it better.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: "open_clip" not in record.pathname)
    warnings.showwarning = _show_warning
    ctx.obj = Settings(
        store=store,
        index=index,
        model=model,
        threads=threads,
        cache_dir=cache_dir,
        model_config_dir=model_config_dir,
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
    folder: Annotated[Path, typer.Argument(help="Folder to index, recursively.")],
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Images per model batch.")] = 32,
    max_files: Annotated[int | None, typer.Option(min=1, help="Stop after this many files.")] = None,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse larger images (decompression-bomb guard).")
    ] = DEFAULT_MAX_PIXELS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Index every image under FOLDER; unchanged files are skipped."""
    from imgvec.pipeline.ingest import IngestOptions, IngestReport, ingest
    from imgvec.sources import LocalFolder

    settings: Settings = ctx.obj
    try:
        source = LocalFolder(folder)
        store = open_store(settings.store, settings.index)
        embedder = _embedder_for(settings, store)
        options = IngestOptions(batch_size=batch_size, max_files=max_files, max_pixels=max_pixels)
        interactive = sys.stderr.isatty() and not as_json

        def progress(report: IngestReport) -> None:
            if interactive:
                err.print(
                    f"\r{report.seen} seen, {report.embedded} embedded, {report.unchanged} unchanged, "
                    f"{len(report.failures)} failed",
                    end="",
                    highlight=False,
                )

        report = ingest(source, store, embedder, options, on_progress=progress)
        if interactive:
            err.print()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail(
            "interrupted; every batch committed so far is kept: run the same command again to continue",
            EXIT_INTERRUPTED,
        ) from None

    summary = {
        "seen": report.seen,
        "embedded": report.embedded,
        "unchanged": report.unchanged,
        "failed": len(report.failures),
        "seconds": round(report.seconds, 3),
        "failures": [{"file_path": f.file_path, "stage": f.stage, "reason": f.reason} for f in report.failures],
    }
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        rate = report.embedded / report.seconds if report.seconds else 0.0
        out.print(
            f"{report.embedded} embedded, {report.unchanged} unchanged, {len(report.failures)} failed "
            f"in {report.seconds:.1f}s ({rate:.1f} images/s) → index {settings.index!r} in {settings.store}",
            highlight=False,
        )
        for failure in report.failures[:20]:
            out.print(f"  [red]{failure.stage}[/] {failure.file_path}: {failure.reason}", highlight=False)
        if len(report.failures) > 20:
            out.print(f"  … and {len(report.failures) - 20} more (use --json for all)")
    raise typer.Exit(EXIT_OK if report.ok else EXIT_PARTIAL)


@app.command()
def search(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Find images like this one.")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=10_000, help="How many results.")] = 10,
    ext: Annotated[list[str] | None, typer.Option("--ext", help="Only these extensions (repeatable).")] = None,
    path_prefix: Annotated[str | None, typer.Option("--path-prefix", help="Only under this path.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Text → image (`imgvec search "a red car"`) or image → image (`--image query.jpg`)."""
    from imgvec.search import search_image, search_text

    settings: Settings = ctx.obj
    if (text is None) == (image is None):
        raise _fail("give either a TEXT query or --image PATH (not both)", EXIT_USAGE)
    where = SearchFilter(extensions=tuple(ext or ()), path_prefix=path_prefix)
    try:
        store = open_store(settings.store, settings.index)
        store.stats()  # a missing index is reported before a model is loaded for nothing
        embedder = _embedder_for(settings, store)
        if image is not None:
            hits = search_image(store, embedder, image, k, where)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Documents in the index, with and without vectors, and the model that made them."""
    settings: Settings = ctx.obj
    try:
        stats = open_store(settings.store, settings.index).stats()
    except ImgvecError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(stats.as_dict()))
        return
    for key, value in stats.as_dict().items():
        out.print(f"{key:>15}: {value}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()

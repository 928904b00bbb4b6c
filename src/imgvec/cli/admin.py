"""Commands that manage indexes: index create/verify, migrate, alias show/rollback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

import typer

from imgvec import wiring
from imgvec.cli.app import alias_app, app, index_app
from imgvec.cli.base import EXIT_ERROR, EXIT_OK, command
from imgvec.cli.options import EXECUTING, TUNING, AsJson
from imgvec.cli.render import ProgressDisplay, out, print_json, step
from imgvec.errors import ImgvecError
from imgvec.pipeline.report import RunReport
from imgvec.settings import Settings
from imgvec.stores import is_remote
from imgvec.stores.opensearch_mapping import KnnIndexSettings
from imgvec.wiring import PipelineFlags


@command(index_app, "create", knn=True)
def index_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new index.")],
    dimension: Annotated[
        int | None, typer.Option(min=1, help="Must equal the model's output (512 for ViT-B-32); checked.")
    ] = None,
    *,
    knn: Mapping[str, Any],
) -> None:
    """A k-NN index for the model's vectors (HNSW, cosine), with the model identity recorded in it."""
    settings: Settings = ctx.obj
    config = _knn_config(settings, knn)
    store = wiring.open_store(settings, name)
    if store.exists():
        raise ImgvecError(f"index {name!r} already exists: `imgvec index verify {name}` checks it")
    embedder = wiring.embedder_for(settings, store)
    if dimension is not None:
        embedder.identity.require_dimension(dimension)
    store.ensure_index(embedder.identity, config=config)
    out.print(f"created {name!r} for {embedder.identity.describe()} in {wiring.store_label(settings)}", highlight=False)


@command(index_app, "verify")
def index_verify(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The index (or alias) to check.")],
    as_json: AsJson = False,
) -> None:
    """Check the live index against what imgvec needs (field type, dimension, space, engine, model); exit 1 if not."""
    settings: Settings = ctx.obj
    store = wiring.open_store(settings, name)
    problems = store.verify(wiring.requested_identity(settings))
    stats = store.stats()
    if as_json:
        print_json({"index": name, "ok": not problems, "problems": problems, **stats.as_dict()})
    else:
        for problem in problems:
            out.print(f"[red]✗[/] {problem}", highlight=False)
        if not problems:
            out.print(f"[green]✓[/] {name}: {stats.dimension}-dim, model {stats.model}", highlight=False)
        out.print(f"{stats.documents} documents, {stats.with_vector} with a vector", highlight=False)
    raise typer.Exit(EXIT_ERROR if problems else EXIT_OK)


@command(app, pipeline=(*TUNING, *EXECUTING), knn=True, aborted="aborted; run the same command again to continue")
def migrate(
    ctx: typer.Context,
    origin_index: Annotated[str, typer.Option("--from", help="The index to copy documents from.")],
    target_index: Annotated[str, typer.Option("--to", help="The new index (created if missing).")],
    alias: Annotated[str, typer.Option(help="Switched to the new index once it is complete.")],
    as_json: AsJson = False,
    *,
    pipeline: PipelineFlags,
    knn: Mapping[str, Any],
) -> None:
    """Copy --from into a new index without its vectors, fill them with the model, switch --alias atomically.

    Run the same command again to resume; `imgvec alias rollback ALIAS` switches back."""
    from imgvec.pipeline.migrate import migrate as run_migration
    from imgvec.pipeline.migrate import resolve_origin

    settings: Settings = ctx.obj
    config = _knn_config(settings, knn)
    aliases = wiring.open_aliases(settings)
    named, origin_index = origin_index, resolve_origin(aliases, origin_index)
    if named != origin_index and not as_json:
        step(f"{named!r} is an alias of {origin_index!r}: migrating from {origin_index!r}")
    origin = wiring.open_store(settings, origin_index)
    wiring.refuse_if_busy(replace(settings, index=origin_index))  # an imgvec run writing there would be left behind
    setup = wiring.prepare_run(replace(settings, index=target_index), pipeline)  # the fill: into the new index

    def fill() -> RunReport:
        display = ProgressDisplay(enabled=not as_json)
        run = setup.indexer(source=setup.missing_source(), on_progress=display.update)
        with wiring.stop_on_signals(run, step), display:
            return run.run()

    report = run_migration(
        origin,
        setup.store,
        aliases,
        alias=alias,
        identity=setup.model.identity,
        fill=fill,
        config=config,
        on_step=(lambda _text: None) if as_json else step,
    )
    if as_json:
        print_json(report.as_dict())
        return
    with_vector = report.target_stats.with_vector if report.target_stats else 0
    out.print(
        f"{alias!r} now points to {target_index!r} ({with_vector} documents with vectors); "
        f"the old index {origin_index!r} is kept",
        highlight=False,
    )


@command(alias_app, "show")
def alias_show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The alias.")]) -> None:
    """The index an alias points to, and the one it was migrated from."""
    settings: Settings = ctx.obj
    target = wiring.open_aliases(settings).target(name)
    if target is None:
        raise ImgvecError(f"no alias {name!r}")
    origin = wiring.open_store(settings, target).origin()
    out.print(f"{name} → {target}" + (f" (migrated from {origin})" if origin else ""), highlight=False)


@command(alias_app, "rollback")
def alias_rollback(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The alias.")]) -> None:
    """Point the alias back at the index its current index was migrated from (kept by `imgvec migrate`)."""
    from imgvec.pipeline.migrate import rollback

    settings: Settings = ctx.obj
    current, origin = rollback(wiring.open_aliases(settings), name, partial(wiring.open_store, settings))
    out.print(f"{name} → {origin} (was {current}, which is kept)", highlight=False)


def _knn_config(settings: Settings, knn: Mapping[str, Any]) -> KnnIndexSettings | None:
    """The k-NN flags as an OpenSearch index's settings (checked even for the embedded store, which takes none)."""
    options = KnnIndexSettings(**knn)
    return options if is_remote(settings.store) else None

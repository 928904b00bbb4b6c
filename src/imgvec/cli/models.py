"""Commands about the model itself: export-model (the torch-free bundle a Lambda runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgvec import wiring
from imgvec.cli.app import app
from imgvec.cli.base import command
from imgvec.cli.options import AsJson
from imgvec.cli.render import out, print_json
from imgvec.embed.modelspec import DEFAULT_MODEL
from imgvec.settings import Settings


@command(app, "export-model")
def export_model(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Where to write the bundle (made if missing).")],
    fp32: Annotated[
        bool, typer.Option("--fp32/--no-fp32", help="Keep the fp32 graph (--no-fp32: int8 only, a quarter the size).")
    ] = True,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Add the int8 graphs, quantised here.")] = True,
    as_json: AsJson = False,
) -> None:
    """Write the model's image tower as a bundle that runs without torch (ONNX Runtime or OpenVINO): what the
    Lambda loads (docs/aws.md). Each runtime's agreement with torch fp32 is measured here and recorded."""
    from imgvec.embed.bundle import export_bundle

    settings: Settings = ctx.obj
    embedder = wiring.load_embedder(settings, settings.model or DEFAULT_MODEL)
    manifest = export_bundle(embedder, folder, fp32=fp32, int8=int8)
    if as_json:
        print_json(manifest)
        return
    size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
    agreement = ", ".join(f"{name} {cosine:.6f}" for name, cosine in manifest["agreement"].items())
    out.print(
        f"wrote {folder} ({size / 1e6:.0f} MB): {embedder.identity.describe()}; cosine to torch fp32: {agreement}; "
        f"runs {' '.join(manifest['chosen'])} unless IMGVEC_RUNTIME/IMGVEC_PRECISION say otherwise",
        highlight=False,
    )

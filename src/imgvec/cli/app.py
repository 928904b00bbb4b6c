"""The `imgvec` app and its global options; the commands live in indexing.py, querying.py and admin.py."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer

from imgvec.allocator import limit_heap_growth
from imgvec.cli.render import warn
from imgvec.embed.modelspec import DEFAULT_MODEL
from imgvec.embed.runtime import Precision, Runtime
from imgvec.settings import DEFAULT_INDEX, DEFAULT_STORE, Settings

QUERY_COMMANDS = frozenset({"search", "serve"})
"""Commands that answer queries keep glibc's default allocator: the tuning that keeps an ingest's heap flat makes
every k-NN search of the embedded store several times slower (docs/serving.md), and these commit nothing."""

app = typer.Typer(
    help="Turn a large image collection into a searchable CLIP vector index.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
index_app = typer.Typer(help="Create and check k-NN indexes.", no_args_is_help=True)
alias_app = typer.Typer(help="Show and roll back aliases.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(alias_app, name="alias")


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
        Runtime,
        typer.Option(
            envvar="IMGVEC_RUNTIME",
            help="Image encoder runtime. auto: the fastest this CPU (or GPU) runs within the tested agreement, "
            "measured once per CPU (or GPU model) and model and cached; torch-compile: torch.compile, on a GPU.",
        ),
    ] = Runtime.AUTO,
    precision: Annotated[
        Precision,
        typer.Option(
            envvar="IMGVEC_PRECISION",
            help="auto: measured, or the runtime's best (bf16 on a CPU needs AMX or AVX512-BF16, int8 runs through "
            "onnx; fp16 and bf16 on a GPU run through torch).",
        ),
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
        # opensearch-py logs a traceback at WARNING for each retry of a failed request (a refused connection was
        # 265 lines); the StoreError that follows says it in one. -v brings them back.
        for library in ("opensearch", "urllib3"):
            logging.getLogger(library).setLevel(logging.ERROR)
    warnings.showwarning = _show_warning
    # Lance's Rust side logs its own maintenance to stderr: e.g. "partition index is 21 but the number of partitions
    # is 7, skip loading it" each time an index optimize joins small IVF partitions, which is expected and harmless
    # (search results were checked). Errors still raise; LANCEDB_LOG=warn (or debug) brings the rest back.
    os.environ.setdefault("LANCEDB_LOG", "warn" if verbose else "error")
    if ctx.invoked_subcommand not in QUERY_COMMANDS:
        limit_heap_growth()  # before the store's threads start: long runs stay flat (see allocator.py)
    ctx.obj = Settings(
        store=store,
        index=index,
        model=model,
        threads=threads,
        device=device,
        runtime=runtime.value,
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
    warn(str(message))

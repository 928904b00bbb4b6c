"""`imgvec serve`: the HTTP API, the search page and /metrics in one long-running process."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from typing import Annotated

import typer

from imgvec.cli.app import app
from imgvec.cli.base import command
from imgvec.cli.render import log_line, warn
from imgvec.errors import UsageError
from imgvec.settings import Settings

LOOPBACK = "127.0.0.1"


@command(app)
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on; loopback unless you mean to share it.")] = LOOPBACK,
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="IMGVEC_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' for everything under /api (not /healthz, /metrics).",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar="IMGVEC_ALLOWED_HOSTS",
            help="A name clients use for this service (repeatable; the env var takes a comma list); requests "
            "naming another get 400. Default: the --host address (loopback: localhost too); any on 0.0.0.0.",
            show_default=False,
        ),
    ] = None,
    max_upload_mb: Annotated[int, typer.Option(min=1, max=4096, help="Largest request body (an uploaded image).")] = 64,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client may take to send each part of a body (then 408).")
    ] = 30.0,
    batch_size: Annotated[int, typer.Option(min=1, max=256, help="Most requests one model call serves.")] = 32,
    decode_memory_mb: Annotated[
        int,
        typer.Option(min=64, help="Memory for decoding images at once; requests for huge pictures take turns."),
    ] = 1024,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            min=0, max=1000, help="How long a model call that already has company waits for more (a lone one: none)."
        ),
    ] = 10.0,
) -> None:
    """Serve the search page at /, the HTTP API under /api (OpenAPI at /openapi.json) and /metrics.

    The model loads once, on the first query; concurrent requests share model calls."""
    import uvicorn

    from imgvec.service.app import create_app
    from imgvec.service.hosts import allowed_hosts
    from imgvec.service.searcher import ServiceConfig

    settings: Settings = ctx.obj
    if token is None and "IMGVEC_TOKEN" in os.environ:
        token = os.environ["IMGVEC_TOKEN"]  # set but empty: refused below, as --token= is, never served openly
    if token is not None and not token.strip():
        raise UsageError("--token (or IMGVEC_TOKEN) is empty: give a token, or unset it to serve without one")
    if not token and not _loopback(host):
        warn(f"--host {host} without --token: anyone who can reach this port can spend its model time")
    names = [part for value in allowed_host or () for part in value.split(",")]
    config = ServiceConfig(
        token=token,
        allowed_hosts=allowed_hosts(host, names),
        max_upload_bytes=max_upload_mb << 20,
        body_timeout=body_timeout,
        max_batch=batch_size,
        decode_memory_bytes=decode_memory_mb << 20,
        max_wait=batch_wait_ms / 1000,
    )
    if port == 0:  # a free port now, so that the address announced beside the store is the one served
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    service = create_app(settings, config, announce_url=f"http://{'[' + local + ']' if ':' in local else local}:{port}")
    guarded = " (token required)" if token else ""
    log_line(f"serving index {settings.index!r} of {settings.store} at {where}{guarded}")
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    uvicorn.run(
        service,
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_graceful_shutdown=5,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

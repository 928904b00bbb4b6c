"""The ``Host`` header check: a service on loopback without a token is still reachable from a browser page on any
site through DNS rebinding (a name that resolves to 127.0.0.1 after the page loaded), and only the header the
browser sends tells such a request apart. Requests naming another host get 400 before any route runs."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(bound: str, configured: Iterable[str] = ()) -> frozenset[str]:
    """The names a request may give: those configured, else the bound address (loopback: its usual names too).
    A service bound to every interface (0.0.0.0, ::) cannot know its names, so it takes any unless told."""
    names = {name.strip().lower().strip("[]") for name in configured if name.strip()}
    if names:
        return frozenset(names)
    if bound in ("0.0.0.0", "::", ""):
        return frozenset({"*"})
    bound = bound.lower().strip("[]")
    return frozenset({bound, *LOOPBACK_NAMES}) if bound in LOOPBACK_NAMES or bound.startswith("127.") else {bound}


def host_of(header: str) -> str:
    """``example.org:8000`` → ``example.org``; ``[::1]:8000`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.hosts:
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), "")
        if host_of(header) in self.hosts:
            await self.app(scope, receive, send)
            return
        detail = f"Host {header!r} is not served here: serve --allowed-host NAME (or IMGVEC_ALLOWED_HOSTS) adds it"
        await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)

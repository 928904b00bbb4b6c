"""A running `imgvec serve` says where it listens, beside the store it serves, so that `imgvec search` can ask it
rather than load the model itself: a CLI search costs seconds of imports and model loading, a query to a warm
service milliseconds.

The file is ``<state dir>/serve/<index>.json`` (the state dir lives beside an embedded store, ``Settings.state_dir``):
written when the service starts, removed when it stops, and ignored when the process it names is gone or does not
answer. This module imports nothing heavy (no torch, no lancedb, no HTTP client): the CLI reads it before deciding
to load anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgvec.errors import IdentityMismatchError, IndexNotFoundError, UsageError
from imgvec.settings import Settings

HEALTH_TIMEOUT_SECONDS = 0.5
"""A service that does not answer /healthz this fast is treated as absent: the CLI then searches by itself."""
SEARCH_TIMEOUT_SECONDS = 120.0
"""The first query loads the model in the service (tens of seconds for a large one on a slow disk)."""
_ERRORS: dict[int, type[Exception]] = {400: UsageError, 404: IndexNotFoundError, 409: IdentityMismatchError}
"""The service's answers a person must act on, as the CLI's own errors (and exit codes); any other status means
the service cannot help, and the CLI searches by itself."""


class Unavailable(Exception):
    """The service cannot answer this query (gone, busy, needs a token we lack): search without it."""


def announcement_path(settings: Settings) -> Path:
    return settings.state_dir / "serve" / f"{settings.index}.json"


def announce(settings: Settings, url: str, *, token_required: bool) -> Path:
    """Written atomically; readable by the owner only (it names where a token-protected service listens)."""
    path = announcement_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "url": url,
        "pid": os.getpid(),
        "store": settings.store,
        "index": settings.index,
        "model": settings.model,
        "token_required": token_required,
    }
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(body))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def withdraw(settings: Settings) -> None:
    """Remove this process's announcement (another service may have announced itself since: leave that one)."""
    path = announcement_path(settings)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


@dataclass(frozen=True, slots=True)
class RunningService:
    url: str
    token: str | None

    def search(self, params: list[tuple[str, str]], image: Path | None = None) -> list[dict[str, Any]]:
        """GET /api/search (text) or POST it with the image; the hits as the API gives them (``search.hit_json``)."""
        query = urllib.parse.urlencode(params)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = None
        if image is not None:
            boundary = uuid.uuid4().hex
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="query"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + image.read_bytes()
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        request = urllib.request.Request(f"{self.url}/api/search?{query}", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=SEARCH_TIMEOUT_SECONDS) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            error = _ERRORS.get(exc.code)
            if error is None:
                raise Unavailable(f"HTTP {exc.code}") from None
            try:
                detail = json.loads(exc.read()).get("detail")
            except ValueError:
                detail = None
            raise error(detail if isinstance(detail, str) else f"the service answered HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise Unavailable(str(exc)) from None


def running_service(settings: Settings) -> RunningService | None:
    """The service announced for this store and index, if its process lives and it answers now; None otherwise
    (and a stale announcement is removed). A service that needs a token is used only when IMGVEC_TOKEN is set."""
    path = announcement_path(settings)
    try:
        found = json.loads(path.read_text())
        url, pid = str(found["url"]), int(found["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (found.get("store"), found.get("index"), found.get("model")) != (settings.store, settings.index, settings.model):
        return None  # another store, index or --model than this command's
    if not _alive(pid):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    token = os.environ.get("IMGVEC_TOKEN") or None
    if found.get("token_required") and not token:
        return None
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=HEALTH_TIMEOUT_SECONDS) as answer:
            if answer.status != 200:
                return None
    except (OSError, ValueError):
        return None
    return RunningService(url, token)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True

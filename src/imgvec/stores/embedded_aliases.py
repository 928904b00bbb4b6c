"""Aliases of one embedded store: a small JSON file replaced atomically, so a reader never sees half a switch."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imgvec.errors import StoreError


class EmbeddedAliases:
    """Aliases of one embedded store in ``_imgvec/aliases.json``, replaced atomically (write, fsync, rename)."""

    def __init__(self, path: str | Path) -> None:
        self.file = Path(path).expanduser() / "_imgvec" / "aliases.json"

    def _read(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.file.read_text()))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read aliases from {self.file}: {exc}") from exc

    def target(self, alias: str) -> str | None:
        return self._read().get(alias)

    def switch(self, alias: str, index: str) -> str | None:
        aliases = self._read()
        previous = aliases.get(alias)
        aliases[alias] = index
        self.file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            json.dump(aliases, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.file)
        return previous

"""The `imgvec` command: one module per command group, on top of the wiring in ``imgvec.runs``."""

from __future__ import annotations

from importlib import import_module

from imgvec.cli.app import app

# Registration order is the order of `imgvec --help`.
for _group in ("indexing", "querying", "serving", "admin", "models"):
    import_module(f"imgvec.cli.{_group}")

__all__ = ["app"]

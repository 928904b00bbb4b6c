"""The `imgvec` command: one module per command group, on top of the wiring in ``imgvec.runs``."""

from __future__ import annotations

from importlib import import_module

from imgvec.cli.app import app

for _group in ("indexing", "querying", "serving", "admin"):  # registration order is the order of `imgvec --help`
    import_module(f"imgvec.cli.{_group}")

__all__ = ["app"]

"""What every command shares: the exit codes, and ``command``, which registers a command with its error handling
and the pipeline flags it takes.

The one place where an ``ImgvecError`` becomes exit 1 with one line on stderr, a ``UsageError`` exit 2, and Ctrl-C
(a second one, which aborts) exit 130: commands raise, they do not print errors themselves.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from imgvec.cli.options import KNN_FLAGS, PIPELINE_FLAGS
from imgvec.cli.render import fail
from imgvec.errors import ImgvecError, UsageError, reason

log = logging.getLogger(__name__)
EXIT_OK = 0
EXIT_ERROR = 1
"""A set-up problem stopped the run (bad store, model mismatch, unreadable source)."""
EXIT_USAGE = 2
"""Bad flags (Typer's own code)."""
EXIT_PARTIAL = 3
"""The run finished, but some files failed; they are listed with their reasons."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM: committed batches are kept; the same command continues."""

ABORTED = "aborted; committed batches are kept: run the same command again to continue"

Command = TypeVar("Command", bound=Callable[..., None])


def command(
    group: typer.Typer,
    name: str | None = None,
    *,
    pipeline: tuple[str, ...] = (),
    knn: bool = False,
    aborted: str = ABORTED,
) -> Callable[[Command], Command]:
    """Register a command on ``group``. ``pipeline``: the pipeline flags it takes (``options.PIPELINE_FLAGS``),
    passed to it as one mapping in its ``pipeline`` parameter; ``knn``: the k-NN index flags, likewise in ``knn``.
    ``aborted``: what a second Ctrl-C says was kept."""
    flag_groups: dict[str, dict[str, tuple[Any, Any]]] = {}
    if pipeline:
        flag_groups["pipeline"] = {flag: PIPELINE_FLAGS[flag] for flag in pipeline}
    if knn:
        flag_groups["knn"] = KNN_FLAGS

    def register(function: Command) -> Command:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> None:
            for parameter, flags in flag_groups.items():
                kwargs[parameter] = {flag: kwargs.pop(flag) for flag in flags}
            try:
                function(*args, **kwargs)
            except UsageError as exc:
                raise fail(str(exc), EXIT_USAGE) from None
            except ImgvecError as exc:
                raise fail(str(exc), EXIT_ERROR) from None
            except OSError as exc:  # the machine, not the input: a full disk, a read-only mount, a vanished path
                raise fail(environment_error(exc), EXIT_ERROR) from None
            except KeyboardInterrupt:
                raise fail(aborted, EXIT_INTERRUPTED) from None

        if flag_groups:
            run.__signature__ = _with_flags(function, flag_groups)
        group.command(name)(run)
        return function

    return register


def environment_error(exc: OSError) -> str:
    """One line for an OSError no part of imgvec expected (``-v`` still shows the traceback)."""
    log.info("the error in full", exc_info=exc)
    advice = {
        errno.ENOSPC: "free space on that disk, then run the same command again (committed work is kept)",
        errno.EDQUOT: "free space within the quota, then run the same command again (committed work is kept)",
        errno.EROFS: "that file system is read-only: give a writable --store, or remount it read-write",
        errno.EACCES: "check the permissions there",
        errno.EPERM: "check the permissions there",
    }.get(exc.errno or 0, "run again with -v for the details")
    return f"{reason(exc)}: {advice}"


def _with_flags(function: Callable[..., None], flag_groups: dict[str, dict[str, tuple[Any, Any]]]) -> inspect.Signature:
    """The command's signature with each group's parameter replaced by the group's flags, as Typer reads them."""
    signature = inspect.signature(function, eval_str=True)
    own = [parameter for name, parameter in signature.parameters.items() if name not in flag_groups]
    added = [
        inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for flags in flag_groups.values()
        for flag, (annotation, default) in flags.items()
    ]
    return signature.replace(parameters=[*own, *added])

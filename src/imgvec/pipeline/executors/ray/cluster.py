"""The connection to Ray: importing it, starting an instance for the run or joining a cluster, and Ray's errors as
one line. Nothing here knows about batches or workers."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import warnings
from typing import Any

from imgvec.embed.cpu import usable_cores
from imgvec.errors import RayWorkersError, UsageError, reason

OBJECT_STORE_BYTES = 256 << 20
"""The object store of a Ray started for the run: batches and vectors are small, and Ray's default (30 % of RAM
in /dev/shm) would fall back to a slow disk where /dev/shm is a container's 64 MB."""
FORWARDED_ENVIRONMENT = ("AWS_", "HF_", "HUGGINGFACE_", "OPENCLIP_")
"""Variables of the driver's environment the actors get too: S3 credentials and endpoint, model caches."""
CONNECT_SECONDS = 5.0
"""How long the first connection to a cluster's head may take before it is called unreachable."""
RAY_HELP = "install Ray with: pip install 'imgvec[ray]'"


def import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage to its makers unless told not to
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray: {RAY_HELP}") from None
    return ray


def connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or start a Ray instance on this machine for the run (None). Returns
    whether this call connected (and so the run shuts Ray down after); False where a library user (or a
    benchmark) connected already."""
    if ray.is_initialized():
        return False
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENVIRONMENT)}
    common: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "runtime_env": {"env_vars": forwarded} if forwarded else None,
    }
    local = {
        "address": "local",  # a new instance, even where a cluster runs that ray.init() would join
        "num_cpus": usable_cores(),
        "include_dashboard": False,
        "object_store_memory": OBJECT_STORE_BYTES,
        "_plasma_directory": _object_store_directory(),
    }
    if address is not None:
        _check_reachable(address)
    try:
        with warnings.catch_warnings():
            # Ray starts its processes by fork and exec; LanceDB warns in each child of a fork, though the
            # child runs none of its code before exec.
            warnings.filterwarnings("ignore", message="lancedb fork support")
            ray.init(**(local if address is None else {"address": address}), **common)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        where = f"the Ray cluster at {address}" if address else "a Ray instance on this machine"
        raise RayWorkersError(f"cannot start or reach {where}: {reason(exc)} (`ray status` says more)") from None
    return True


def live_nodes(ray: Any) -> list[dict[str, float]]:
    """The resources of each node that is alive."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def cause_of(exc: BaseException) -> str:
    """Ray's error text without its traceback: the first line that says something."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("Traceback", " "))]
    # The actor's exception as Ray words it, "imgvec.errors.ModelLoadError: …": the words after the type.
    return re.sub(r"^[\w.]+(?:Error|Exception): ", "", lines[-1]) if lines else type(exc).__name__


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes; one TCP connection says within seconds whether it is there."""
    location = address.removeprefix("ray://")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayWorkersError(
            f"cannot reach the Ray cluster at {address} ({reason(exc)}): is Ray running there "
            "(`ray start --head`), and is the port open to this machine?"
        ) from None


def _object_store_directory() -> str | None:
    """/dev/shm when it has room for the object store, else the temporary directory (said, not warned by Ray)."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return tempfile.gettempdir()
    return None if stats.f_bavail * stats.f_frsize > 2 * OBJECT_STORE_BYTES else tempfile.gettempdir()

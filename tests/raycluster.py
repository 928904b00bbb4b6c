"""A real two-node Ray cluster on 127.0.0.1, as a user starts one: `ray start --head`, then a second `ray start
--address`, one CPU each. The second node can be lost (its raylet killed) and started again."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.s3server import free_port

RAY = str(Path(sys.executable).parent / "ray")
HEALTH_CHECKS = json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3})
"""A lost node is declared dead after ~3 s instead of Ray's default ~30 s: the node-loss test waits on it."""


class RayCluster:
    def __init__(self) -> None:
        # A short path: Ray's sockets live under it, and a Unix socket path may not exceed 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="imgvec-ray-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        repo = str(Path(__file__).resolve().parent.parent)
        # Token authentication, as Ray sets up a cluster by default: the nodes and every driver share the token.
        token = Path(self.temp_dir) / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.driver_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        # The nodes' workers import the tests' own helpers (a source that crashes on one file) like imgvec's code.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": repo, **self.driver_env}
        self.worker_raylet: int | None = None

    def start(self) -> None:
        self._ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            f"--system-config={HEALTH_CHECKS}",
            "--object-store-memory=100000000",
        )
        self.start_worker_node()

    def start_worker_node(self) -> None:
        before = set(self._raylets())
        self._ray(
            "start",
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--object-store-memory=100000000",
        )
        started = set(self._raylets()) - before
        assert len(started) == 1, f"expected one new raylet, found {started}"
        self.worker_raylet = started.pop()
        self.wait_for_nodes(2)

    def kill_worker_node(self) -> None:
        """The second node lost, as a machine that dies: its raylet and every process it started (the actors'
        workers among them) killed with SIGKILL. The raylet alone is not enough: its actors answer their callers
        directly and kept working for as long as a run lasted."""
        assert self.worker_raylet is not None
        raylet = psutil.Process(self.worker_raylet)
        for process in [raylet, *raylet.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.worker_raylet = None

    def alive_nodes(self) -> int:
        status = subprocess.run(
            [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True, check=False
        ).stdout
        active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {count} nodes")
            time.sleep(0.5)

    def stop(self) -> None:
        """This cluster's processes and their children only (`ray stop` would end every Ray on the machine)."""
        processes = [psutil.Process(pid) for pid in self._pids() if psutil.pid_exists(pid)]
        with contextlib.suppress(psutil.Error):
            processes += [child for process in processes for child in process.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _pids(self) -> list[int]:
        """Processes started for this cluster: they name its temp dir, or its head's port (the client server)."""
        mine = (self.temp_dir.encode(), f":{self.port}".encode())
        return [pid for pid, argv in self._processes() if any(mark in arg for arg in argv[1:] for mark in mine)]

    def _raylets(self) -> list[int]:
        """The raylet processes of this cluster (each node has one), found by the temp dir they run under."""
        return [pid for pid in self._pids() if dict(self._processes()).get(pid, [b""])[0].endswith(b"/raylet")]

    @staticmethod
    def _processes() -> list[tuple[int, list[bytes]]]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    found.append((int(pid), cmdline.read().split(b"\0")))
            except OSError:
                continue
        return found

    def _ray(self, *args: str) -> None:
        result = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"ray {args[0]} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

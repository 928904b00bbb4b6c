"""moto's server on 127.0.0.1 as CloudWatch for the tests (``moto_server``, from ``moto[server]``): PutMetricData
and GetMetricData over real HTTP, reached the way a user's boto3 reaches AWS, through ``AWS_ENDPOINT_URL_CLOUDWATCH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.s3server import free_port

REGION = "us-east-1"


class MotoServer:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        beside = Path(sys.executable).parent / "moto_server"
        binary = str(beside) if beside.exists() else shutil.which("moto_server")
        if not binary:
            raise RuntimeError("moto_server is not installed: pip install -e '.[test]' (moto[server])")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)

    def env(self) -> dict[str, str]:
        """Only the endpoint: moto takes any credentials, so a run's S3 ones serve for CloudWatch too."""
        return {"AWS_ENDPOINT_URL_CLOUDWATCH": self.endpoint}

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "cloudwatch",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def latest(self, namespace: str, name: str, dimensions: dict[str, str], stat: str = "Maximum") -> float | None:
        """The statistic of a metric over the last hour, read back with GetMetricData (what a dashboard does)."""
        now = datetime.now(UTC)
        answer = self.client().get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": namespace,
                            "MetricName": name,
                            "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
                        },
                        "Period": 3600,
                        "Stat": stat,
                    },
                }
            ],
            StartTime=now - timedelta(hours=1),
            EndTime=now + timedelta(minutes=5),
        )
        values = answer["MetricDataResults"][0]["Values"]
        return max(values) if values else None

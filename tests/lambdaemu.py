"""The real Lambda runtime on 127.0.0.1 for the tests: AWS's Runtime Interface Emulator running imgvec's handler
through ``awslambdaric``, and a small front that spreads invocations over several emulators as Lambda would.

One emulator serves one invocation at a time (two at once crash it), so the front routes each invocation to an
idle one and answers 429 TooManyRequestsException when none is idle, as Lambda does when a function's reserved
concurrency is used up. It also injects what a live Lambda does now and then: 5xx, slow answers, function errors
(an exception, a time-out, an answer over 6 MB), each in Lambda's own wire format.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.s3server import free_port

HANDLER = "imgvec.aws.lambda_handler.handler"
INVOCATIONS = "/2015-03-31/functions/function/invocations"
START_TIMEOUT = 30.0


def rie_binary() -> str:
    """The emulator scripts/install.sh builds into the environment (a Go module), or one on PATH."""
    beside = Path(sys.executable).parent / "aws-lambda-rie"
    found = str(beside) if beside.exists() else shutil.which("aws-lambda-rie")
    if not found:
        raise RuntimeError("aws-lambda-rie is not installed: scripts/install.sh builds it with Go")
    return found


class Emulator:
    """One function instance: ``aws-lambda-rie`` with ``python -m awslambdaric`` and the handler."""

    def __init__(self, log: Path, env: dict[str, str], timeout: int = 60) -> None:
        self.port, self.runtime_port = free_port(), free_port()
        self.log = log
        self.env = {**env, "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout), "AWS_LAMBDA_FUNCTION_NAME": "imgvec-test"}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Emulator:
        args = [
            rie_binary(),
            "--runtime-interface-emulator-address",
            f"127.0.0.1:{self.port}",
            "--runtime-api-address",
            f"127.0.0.1:{self.runtime_port}",
            sys.executable,
            "-m",
            "awslambdaric",
            HANDLER,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"aws-lambda-rie exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"aws-lambda-rie did not listen: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stdout(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Fault:
    """An answer the front gives instead of the function's, ``times`` times, to invocations ``when`` picks."""

    kind: str
    """``500``, ``502``, ``429``, ``slow`` (the function's answer, late), ``error`` (an exception), ``timeout``,
    ``too_large`` (an answer over 6 MB)."""
    times: int = 1
    when: Callable[[dict], bool] = lambda _request: True
    seconds: float = 1.5


@dataclass
class FrontCounts:
    invocations: int = 0
    throttled: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    concurrent_peak: int = 0
    busy_seconds: float = 0.0
    """Time the instances spent on invocations, summed: what Lambda bills, give or take its rounding."""
    requests: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """When each invocation arrived (time.monotonic), throttled ones included."""


class Front:
    """Lambda's Invoke API on 127.0.0.1, in front of ``emulators``."""

    def __init__(self, emulators: list[Emulator]) -> None:
        self.emulators = emulators
        self._idle = list(emulators)
        self._lock = threading.Lock()
        self.faults: list[Fault] = []
        self.counts = FrontCounts()
        self._busy = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, answer = front._invoke(body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def flags(self, *extra: str) -> list[str]:
        """``imgvec``'s flags for a run through this front."""
        return [
            "--executor",
            "lambda",
            "--lambda-function",
            "cis-image-embedding",
            "--lambda-endpoint-url",
            self.endpoint,
            *extra,
        ]

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _fault_for(self, request: dict) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.when(request):
                    fault.times -= 1
                    self.counts.injected[fault.kind] = self.counts.injected.get(fault.kind, 0) + 1
                    return fault
        return None

    def _invoke(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        with self._lock:
            self.counts.invocations += 1
            self.counts.requests.append(request)
            self.counts.arrivals.append(time.monotonic())
        fault = self._fault_for(request if isinstance(request, dict) else {})
        json_type = {"Content-Type": "application/json"}
        if fault is not None and fault.kind in ("500", "502", "429"):
            code = {"500": "ServiceException", "502": "BadGatewayException", "429": "TooManyRequestsException"}
            headers = {**json_type, "x-amzn-ErrorType": code[fault.kind]}
            return int(fault.kind), headers, json.dumps({"Type": "Service", "message": "injected"}).encode()
        if fault is not None and fault.kind in ("error", "timeout", "too_large"):
            error = {
                "error": {"errorType": "Runtime.ExitError", "errorMessage": "RequestId: x Error: Runtime exited"},
                "timeout": {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 300.00 seconds"},
                "too_large": {
                    "errorType": "Function.ResponseSizeTooLarge",
                    "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
                },
            }[fault.kind]
            return 200, {**json_type, "X-Amz-Function-Error": "Unhandled"}, json.dumps(error).encode()
        with self._lock:
            if not self._idle:
                self.counts.throttled += 1
                headers = {**json_type, "x-amzn-ErrorType": "TooManyRequestsException"}
                said = {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded", "Type": "User"}
                return 429, headers, json.dumps({**said, "message": "Rate Exceeded."}).encode()
            emulator = self._idle.pop()
            self._busy += 1
            self.counts.concurrent_peak = max(self.counts.concurrent_peak, self._busy)
        began = time.perf_counter()
        try:
            status, headers, answer = _forward(emulator, body)
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            return status, headers, answer
        finally:
            with self._lock:
                self._idle.append(emulator)
                self._busy -= 1
                self.counts.busy_seconds += time.perf_counter() - began

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _forward(emulator: Emulator, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """To the emulator, which knows its one function as "function", whatever name the caller used."""
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=600)
    try:
        connection.request("POST", INVOCATIONS, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        kept = {key: value for key, value in response.getheaders() if key.lower().startswith(("x-amz", "content-type"))}
        return response.status, kept, answer
    except OSError as exc:
        return 502, {"Content-Type": "application/json"}, json.dumps({"message": str(exc)}).encode()
    finally:
        connection.close()


def lambda_client(endpoint: str):
    """The call the file-index worker makes: boto3's Lambda client, pointed at ``endpoint``."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="worker",
        aws_secret_access_key="worker",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=120),
    )

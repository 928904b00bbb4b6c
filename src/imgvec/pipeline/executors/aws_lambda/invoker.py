"""One synchronous Lambda invocation, and what its outcome means for the batch it carried.

Lambda answers in more ways than success and failure, and each asks for something else: a throttle (429, the
function's concurrency is used up) is retried as it was, after a pause, and costs the batch nothing; a function
error, a time-out, a 5xx, an answer over the 6 MB limit or a lost connection is the batch's failure (retried, then
split, ``executor.py``); a missing function or refused credentials stop the run with one line, since no retry can
help. boto3's own retries are off: the executor retries with knowledge boto3 lacks (which images, how often).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from imgvec.aws_client import aws_client
from imgvec.errors import ImgvecError

FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDeniedError",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "KMSAccessDeniedException",
        "InvalidRuntimeException",
    }
)
"""Errors no retry can help: the function is not there, or these credentials may not call it."""
THROTTLE_CODES = frozenset({"TooManyRequestsException", "ThrottlingException", "EC2ThrottledException"})
FATAL_FUNCTION_ERRORS = frozenset({"ModelLoadError", "InvalidRequest", "IdentityMismatchError", "UsageError"})
"""Error payloads of imgvec's own handler that say the function itself cannot embed (its bundle, its settings)."""


class LambdaError(ImgvecError):
    """The Lambda function cannot do the run's work at all (missing, refused, misconfigured)."""


class Kind(Enum):
    OK = "ok"
    THROTTLED = "throttled"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Invocation:
    kind: Kind
    answer: dict[str, Any] | None = None
    reason: str = ""
    seconds: float = 0.0
    sent: int = 0
    received: int = 0


class LambdaClient:
    def __init__(self, function: str, *, endpoint_url: str | None, timeout: float, connections: int) -> None:
        """``timeout``: the function's own time-out; the driver waits a little longer for its answer.
        ``endpoint_url``: None lets boto3 read ``AWS_ENDPOINT_URL_LAMBDA`` (or ``AWS_ENDPOINT_URL``), else AWS."""
        from botocore.config import Config

        self.function = function
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=timeout + 30,
            max_pool_connections=max(10, connections),
            tcp_keepalive=True,
        )
        self._client = aws_client("lambda", endpoint_url=endpoint_url, config=config, flag="--executor lambda")
        self.endpoint = self._client.meta.endpoint_url

    def invoke(self, request: dict[str, Any]) -> Invocation:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        payload = json.dumps(request, separators=(",", ":")).encode()
        began = time.perf_counter()
        try:
            response = self._client.invoke(FunctionName=self.function, Payload=payload)
            body = response["Payload"].read()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = str(error.get("Message") or "").strip()
            said = f"{code or status}{': ' + message if message else ''}"
            if code in THROTTLE_CODES or status == 429:
                return Invocation(Kind.THROTTLED, reason=said, sent=len(payload))
            if status == 404 and not code:  # an endpoint without the function, or no Lambda API at all
                said = f"no function {self.function!r} at {self.endpoint} (404)"
                return Invocation(Kind.FATAL, reason=said, sent=len(payload))
            if code in FATAL_CODES or status in (401, 403):
                return Invocation(Kind.FATAL, reason=f"Lambda refused {self.function!r}: {said}", sent=len(payload))
            return Invocation(Kind.FAILED, reason=f"Lambda answered {said}", sent=len(payload))
        except (EndpointConnectionError, ConnectionClosedError) as exc:
            return Invocation(Kind.UNREACHABLE, reason=str(exc), sent=len(payload))
        except ReadTimeoutError:
            waited = time.perf_counter() - began
            return Invocation(Kind.FAILED, reason=f"no answer from the function in {waited:.0f}s", sent=len(payload))
        except BotoCoreError as exc:
            return Invocation(Kind.FAILED, reason=str(exc), sent=len(payload))
        seconds = time.perf_counter() - began
        sizes = {"sent": len(payload), "received": len(body), "seconds": seconds}
        return _read_answer(body, response.get("FunctionError"), sizes)


def _read_answer(body: bytes, function_error: str | None, sizes: dict[str, Any]) -> Invocation:
    """A 200 is not yet a success: Lambda reports the function's own failures (an exception, a time-out, an answer
    too large) in the body, flagged by ``X-Amz-Function-Error`` (which AWS's emulator leaves out)."""
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        answer = None
    if isinstance(answer, dict) and not function_error and isinstance(answer.get("items"), list):
        return Invocation(Kind.OK, answer=answer, **sizes)
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):  # imgvec's handler said why
        error = answer["error"]
        said = f"{error.get('type')}: {error.get('message')}"
        kind = Kind.FATAL if error.get("type") in FATAL_FUNCTION_ERRORS else Kind.FAILED
        return Invocation(kind, reason=f"the function cannot embed: {said}", **sizes)
    if isinstance(answer, dict) and "errorMessage" in answer:  # the runtime's report of an exception or time-out
        said = f"{answer.get('errorType') or function_error or 'error'}: {answer.get('errorMessage')}"
        return Invocation(Kind.FAILED, reason=f"function error {said}"[:500], **sizes)
    text = body[:200].decode("utf-8", "replace").strip() or "an empty answer"
    return Invocation(Kind.FAILED, reason=f"function error {function_error or ''}: {text}"[:500], **sizes)

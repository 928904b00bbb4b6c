"""Connecting to OpenSearch: self-managed (basic auth), Amazon OpenSearch Service (SigV4 ``es``) and Serverless
(SigV4 ``aoss``). The only module that builds an opensearch-py client."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from imgvec.errors import StoreError
from imgvec.waiting import ACCESS_CHECK_SECONDS, announced

if TYPE_CHECKING:
    from opensearchpy import OpenSearch

AWS_SERVICES = ("es", "aoss")
RETRY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class OpenSearchConnection:
    """How to reach and authenticate to a cluster. Credentials never appear in logs or errors."""

    url: str
    username: str | None = None
    password: str | None = None
    aws_service: str | None = None
    """``es`` or ``aoss`` for SigV4; None: taken from the host name (``*.aoss.amazonaws.com`` → aoss,
    ``*.es.amazonaws.com`` → es), else basic auth or none."""
    aws_region: str | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    timeout: float = 60.0
    max_retries: int = 5

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def service(self) -> str | None:
        if self.aws_service:
            if self.aws_service not in AWS_SERVICES:
                raise StoreError(f"--aws-service {self.aws_service!r}: use es (managed domains) or aoss (Serverless)")
            return self.aws_service
        if self.host.endswith(".aoss.amazonaws.com"):
            return "aoss"
        if self.host.endswith(".es.amazonaws.com"):
            return "es"
        return None

    @property
    def serverless(self) -> bool:
        return self.service == "aoss"

    @property
    def region(self) -> str | None:
        """From the flag, the environment, or the host (``…​.us-east-1.es.amazonaws.com``)."""
        if self.aws_region:
            return self.aws_region
        from_env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if from_env:
            return from_env
        parts = self.host.split(".")
        return parts[-4] if len(parts) >= 5 and parts[-2] == "amazonaws" else None

    def safe_url(self) -> str:
        """The URL without any user:password, for messages."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(options: OpenSearchConnection, connection_class: type | None = None) -> OpenSearch:
    """An opensearch-py client that retries 429/5xx on the transport; ``connection_class`` lets tests record."""
    try:
        from opensearchpy import OpenSearch, Urllib3AWSV4SignerAuth, Urllib3HttpConnection
    except ImportError as exc:  # pragma: no cover - a dependency of imgvec
        raise StoreError("the OpenSearch backend needs opensearch-py: pip install opensearch-py") from exc

    parts = urlsplit(options.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreError(f"--store {options.url!r}: expected http(s)://host[:port]")
    auth: Any = None
    if options.service is not None:
        region = options.region
        if region is None:
            raise StoreError(f"SigV4 ({options.service}) needs a region: --aws-region or AWS_REGION")
        import boto3

        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise StoreError("SigV4 needs AWS credentials: none found in the environment, config or instance role")
        auth = Urllib3AWSV4SignerAuth(credentials, region, options.service)
    else:
        username = options.username or (unquote(parts.username) if parts.username else None)
        password = options.password or (unquote(parts.password) if parts.password else None)
        if username:
            auth = (username, password or "")
    port = parts.port or (443 if parts.scheme == "https" else 9200)
    return OpenSearch(
        hosts=[{"host": parts.hostname, "port": port, "url_prefix": parts.path.rstrip("/")}],
        use_ssl=parts.scheme == "https",
        verify_certs=options.verify_certs,
        ssl_show_warn=options.verify_certs,
        ca_certs=options.ca_certs,
        http_auth=auth,
        connection_class=connection_class or Urllib3HttpConnection,
        timeout=options.timeout,
        max_retries=options.max_retries,
        retry_on_status=RETRY_STATUSES,
        retry_on_timeout=True,
        http_compress=True,
    )


def check_reachable(options: OpenSearchConnection, index: str) -> None:
    """One quick request before any real one: a cluster that accepts connections and never answers is an error
    within ``ACCESS_CHECK_SECONDS``, not after every retry of a minute-long timeout. ``HEAD /index`` works on
    every flavour (Serverless has no ``GET /``)."""
    quick = connect(quick_connection(options))
    label = options.safe_url()
    try:
        with announced(f"{label} to answer (up to {ACCESS_CHECK_SECONDS:g}s)"):
            request(quick.indices.exists, label, index, index=index)
    finally:
        quick.close()


def quick_connection(options: OpenSearchConnection) -> OpenSearchConnection:
    """The same cluster, one try of ``ACCESS_CHECK_SECONDS``: for a first request, or one a command can do
    without."""
    return replace(options, timeout=ACCESS_CHECK_SECONDS, max_retries=0)


def request(method: Any, label: str, index: str, /, **kwargs: Any) -> Any:
    """One request (``kwargs`` go to ``method``); a transport failure becomes a StoreError naming the cluster
    (``label``) and what to check."""
    from opensearchpy import (
        AuthenticationException,
        AuthorizationException,
        ConnectionError,
        ConnectionTimeout,
        TransportError,
    )

    try:
        return method(**kwargs)
    except ConnectionTimeout:
        raise StoreError(
            f"{label} accepted the connection but did not answer in time: check --store, and that the cluster is "
            "up and not overloaded"
        ) from None
    except AuthenticationException:
        raise StoreError(f"{label} refused the credentials (401): check the user/password or AWS keys") from None
    except AuthorizationException as exc:
        raise StoreError(f"{label}: not allowed (403) for index {index!r}: {cluster_reason(exc)}") from None
    except ConnectionError as exc:
        raise StoreError(
            f"cannot reach {label} ({exc.info or exc.error}): check --store and that the cluster is up"
        ) from None
    except TransportError as exc:
        if exc.status_code in (400, 404, 409):
            raise  # callers decide what those mean
        raise StoreError(f"{label} answered HTTP {exc.status_code}: {cluster_reason(exc)}") from None


def cluster_reason(exc: Any) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, dict):
        error = info.get("error")
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("type"))
        if error:
            return str(error)
    return str(getattr(exc, "error", exc))

"""A bucket (and prefix) on S3 or an S3-compatible store (MinIO, SeaweedFS, Ceph).

boto3 with the standard credential chain and region. botocore's adaptive retry mode retries throttling (503
SlowDown), timeouts and dropped connections with backoff and also slows the client down while the server
throttles, so one object that still fails after that is one failure record, never a crash. Access and bucket
problems are checked once, before the listing starts: one clear error instead of a thousand per-object ones.
"""

from __future__ import annotations

import posixpath
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imgvec.documents import Failure, SourceItem, extension_of
from imgvec.errors import ObjectTooLargeError, SourceError, TooManyRequestsError
from imgvec.sources.base import IMAGE_EXTENSIONS, OnListingError
from imgvec.sources.locations import ObjectLocation, parse_s3_url
from imgvec.waiting import ACCESS_CHECK_SECONDS, announced

S3Client = Any
"""boto3 builds its client classes at run time; there is no importable type to name."""

PAGE_SIZE = 1000
"""Keys per listing request (S3's maximum): the listing holds one page at a time, never the whole bucket."""
RETRY_ATTEMPTS = 10
"""botocore attempts per request (adaptive mode, exponential backoff with jitter, capped at 20 s a wait)."""
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
)
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404"})
MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "404"})
MAX_SENDS_PER_READ = 2 * RETRY_ATTEMPTS + 2
"""Requests one object read may make, retries and region redirects included. An endpoint that answers every
request with a redirect and no region sends botocore looking for the bucket's region until Python's recursion
limit (docs/serving.md)."""
_reads = threading.local()


@dataclass(frozen=True, slots=True)
class S3Connection:
    endpoint_url: str | None = None
    """An S3-compatible server (http://127.0.0.1:8333); None: AWS itself, or AWS_ENDPOINT_URL when set."""
    region: str | None = None
    max_connections: int = 32
    """HTTP connections in the pool: at least the number of concurrent readers, or they queue for one."""


def make_client(options: S3Connection, *, quick: bool = False) -> S3Client:
    """``quick``: one short try (``ACCESS_CHECK_SECONDS``), for the first request: a silent endpoint is then an
    error within seconds, not after ten patient attempts of a minute each."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is a dependency; a broken install says so plainly
        raise SourceError("reading from S3 needs boto3: pip install boto3") from exc
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1}
        if quick
        else {"mode": "adaptive", "max_attempts": RETRY_ATTEMPTS},
        connect_timeout=ACCESS_CHECK_SECONDS / 2 if quick else CONNECT_TIMEOUT,
        read_timeout=ACCESS_CHECK_SECONDS if quick else READ_TIMEOUT,
        max_pool_connections=options.max_connections,
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=options.endpoint_url, region_name=options.region, config=config
    )
    client.meta.events.register("before-send.s3", _count_send)
    return client


def _count_send(**_kwargs: Any) -> None:
    sends = getattr(_reads, "sends", None)
    if sends is None:
        return  # a listing or a check: botocore's own retry limits apply
    _reads.sends = sends + 1
    if _reads.sends > MAX_SENDS_PER_READ:
        raise TooManyRequestsError(
            f"the S3 endpoint answered {MAX_SENDS_PER_READ} requests for one object without the object "
            "(redirects?); check --endpoint-url / AWS_ENDPOINT_URL and the bucket's region"
        )


class S3Bucket:
    """``s3://bucket/prefix``: every image object under the prefix, one listing page at a time."""

    def __init__(
        self,
        url: str,
        options: S3Connection | None = None,
        *,
        client: S3Client | None = None,
        extensions: frozenset[str] = IMAGE_EXTENSIONS,
    ) -> None:
        location = parse_s3_url(url)
        if location is None:
            raise SourceError(f"{url!r} is not an S3 URL (s3://bucket/prefix)")
        self.bucket, self.prefix = location.bucket, location.key
        self.options = options or S3Connection()
        self._client = client
        self.extensions = extensions
        self.check_access()

    @property
    def client(self) -> S3Client:
        if self._client is None:
            self._client = make_client(self.options)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        """Decode workers get the bucket without its client (not picklable); each makes its own on first read."""
        return {**self.__dict__, "_client": None}

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def scope(self) -> str:
        return self.location  # an object's file_path is its s3:// URL

    def check_access(self) -> None:
        """One listing request up front, so that bad credentials or a wrong bucket stop the run at once."""
        from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

        endpoint = self.options.endpoint_url or "AWS"
        try:
            with announced(f"{endpoint} to answer a listing of {self.location} (up to {ACCESS_CHECK_SECONDS:g}s)"):
                quick = self._client if self._client is not None else make_client(self.options, quick=True)
                quick.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except ReadTimeoutError:
            raise SourceError(
                f"cannot list {self.location}: {endpoint} accepted the connection but did not answer within "
                f"{ACCESS_CHECK_SECONDS:g}s; check --endpoint-url / AWS_ENDPOINT_URL and that the server is up"
            ) from None
        except (BotoCoreError, ClientError) as exc:
            raise SourceError(describe_s3_error(exc, f"cannot list {self.location}")) from exc

    def scan(self, on_error: OnListingError) -> Iterator[SourceItem]:
        """Keys in S3's order (lexicographic, stable across runs). A listing that still fails after botocore's
        retries is recorded once and ends the listing: what was listed so far is still indexed."""
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": PAGE_SIZE})
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    item = self._item(entry)
                    if item is not None:
                        yield item
        except (BotoCoreError, ClientError) as exc:  # after retries: recorded; the run finishes what it has
            on_error(Failure.listing(self.location, describe_s3_error(exc, "listing stopped")))

    def _item(self, entry: dict[str, Any]) -> SourceItem | None:
        key: str = entry["Key"]
        if key.endswith("/"):
            return None  # a "folder" marker object
        name = posixpath.basename(key)
        extension = extension_of(name)
        if extension not in self.extensions:
            return None
        url = ObjectLocation(self.bucket, key).s3_url
        return SourceItem(
            uri=url,
            file_path=url,
            file_name=name,
            file_extension=extension,
            file_size=int(entry["Size"]),
            mtime=entry["LastModified"].timestamp(),
            bucket=self.bucket,
            file_key=key,
            s3_url=url,
            etag=str(entry.get("ETag", "")).strip('"') or None,
        )

    def read(self, item: SourceItem) -> bytes:
        return read_object(self.client, ObjectLocation(item.bucket or self.bucket, item.file_key or ""))


def read_object(client: S3Client, location: ObjectLocation, max_bytes: int | None = None) -> bytes:
    """The object's bytes. A failure is raised as OSError with a readable reason (the pipeline records it).
    ``max_bytes``: refuse a larger object before its body is read (a URL a client names may point at anything)."""
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    check_location(location)
    _reads.sends = 0
    try:
        response = client.get_object(Bucket=location.bucket, Key=location.key)
        if max_bytes is not None and int(response.get("ContentLength") or 0) > max_bytes:
            response["Body"].close()
            raise ObjectTooLargeError(
                f"{location.s3_url} is {int(response['ContentLength']) >> 20} MiB, over the {max_bytes >> 20} MiB limit"
            )
        return response["Body"].read()
    except ParamValidationError as exc:
        raise SourceError(f"{location.s3_url[:300]!r} is not a valid S3 location: {exc}") from None
    except (BotoCoreError, ClientError) as exc:
        if _code(exc) in MISSING_OBJECT_CODES:
            raise FileNotFoundError(f"{location.s3_url} no longer exists (deleted after it was listed?)") from exc
        if _code(exc) in MISSING_BUCKET_CODES:
            raise FileNotFoundError(f"{location.s3_url}: the bucket {location.bucket!r} does not exist") from exc
        raise OSError(describe_s3_error(exc, f"cannot get {location.s3_url}")) from exc
    except TooManyRequestsError as exc:
        raise TooManyRequestsError(f"cannot get {location.s3_url}: {exc}") from None
    except RecursionError:  # botocore's region look-up, should the per-read limit ever not apply
        raise TooManyRequestsError(f"cannot get {location.s3_url}: the S3 endpoint keeps redirecting") from None
    finally:
        _reads.sends = None


_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,254}$", re.IGNORECASE)
"""What any S3 server takes: AWS's own rule is stricter (3-63 characters, lower case), S3-compatible ones vary."""


def check_location(location: ObjectLocation) -> None:
    """A location no S3 server can hold is the caller's mistake, said before any request: a bucket name with a
    space or a slash, or a key whose ``..`` or ``.`` segments an HTTP client would normalise to another object."""
    if not _BUCKET_NAME.match(location.bucket):
        raise SourceError(f"{location.bucket[:100]!r} is not a valid S3 bucket name")
    if not location.key:
        raise SourceError(f"{location.s3_url[:300]!r} names a bucket, not an object")
    if any(part in (".", "..") for part in location.key.split("/")):
        raise SourceError(f"the key {location.key[:300]!r} has '.' or '..' segments, which name no object")


def describe_s3_error(exc: BaseException, doing: str) -> str:
    """One line a user can act on, for the errors users actually hit."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            f"{doing}: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or run where an instance role applies)"
        )
    if isinstance(exc, EndpointConnectionError):
        return f"{doing}: cannot reach the S3 endpoint ({exc}); check --endpoint-url / AWS_ENDPOINT_URL"
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in DENIED_CODES:
            return (
                f"{doing}: access denied ({code}: {message}); check the credentials and that they allow "
                "s3:ListBucket and s3:GetObject"
            )
        if code in MISSING_BUCKET_CODES:
            return f"{doing}: the bucket does not exist ({code})"
        return f"{doing}: {code}: {message}"
    return f"{doing}: {exc}"


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))

"""One typed settings object, built once by the CLI (flags > environment > defaults) and passed down.

Data only: ``wiring/build.py`` makes stores, models and sources from it. Nothing below the CLI reads the
environment for these, so tests and any other front end can build a Settings directly. It holds credentials, so
it stays on the machine that was given them: a remote worker gets a ``ModelConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_STORE = str(Path.home() / ".imgvec")
DEFAULT_INDEX = "images"


@dataclass(frozen=True, slots=True)
class Settings:
    store: str = DEFAULT_STORE
    index: str = DEFAULT_INDEX
    model: str | None = None
    """None: the model the index was built with, or ViT-B-32/openai for a new index."""
    threads: int | None = None
    device: str = "auto"
    """auto (a CUDA GPU when present), cpu, cuda or cuda:N."""
    runtime: str = "auto"
    """auto (measured per CPU, see embed/probe.py; torch on a GPU), torch, onnx or openvino."""
    precision: str = "auto"
    """auto (with runtime auto: measured; fp16 on a GPU), fp32, bf16, int8 or fp16."""
    cache_dir: str | Path | None = None
    model_config_dir: str | None = None
    s3_endpoint_url: str | None = None
    """An S3-compatible server (MinIO, SeaweedFS, Ceph); None: AWS (boto3 still honours AWS_ENDPOINT_URL)."""
    opensearch_user: str | None = None
    opensearch_password: str | None = None
    aws_service: str | None = None
    """SigV4 for OpenSearch: ``es`` (managed domain) or ``aoss`` (Serverless); None: from the host name."""
    aws_region: str | None = None
    verify_certs: bool = True
    ca_certs: str | None = None

    @property
    def state_dir(self) -> Path:
        """Run state and locks live beside the embedded store, so they move and get deleted with it; for a
        cluster, under ~/.imgvec/_imgvec/<host> on the machine that runs the ingest."""
        from imgvec.stores import is_remote

        if is_remote(self.store):
            host = urlsplit(self.store).netloc.rsplit("@", 1)[-1].replace(":", "_")
            return Path(DEFAULT_STORE) / "_imgvec" / host
        return Path(self.store).expanduser() / "_imgvec"

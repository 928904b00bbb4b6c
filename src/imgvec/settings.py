"""One typed settings object, built once by the CLI (flags > environment > defaults) and passed down.

Nothing below the CLI reads the environment for these, so tests and the service can build a Settings directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgvec.embed.clip import ClipEmbedder
    from imgvec.sources.s3 import S3Options

DEFAULT_STORE = str(Path.home() / ".imgvec")
DEFAULT_INDEX = "images"


@dataclass(frozen=True, slots=True)
class Settings:
    store: str = DEFAULT_STORE
    index: str = DEFAULT_INDEX
    model: str | None = None
    """None: the model the index was built with, or ViT-B-32/openai for a new index."""
    threads: int | None = None
    device: str = "cpu"
    cache_dir: str | Path | None = None
    model_config_dir: str | None = None
    s3_endpoint_url: str | None = None
    """An S3-compatible server (MinIO, SeaweedFS, Ceph); None: AWS (boto3 still honours AWS_ENDPOINT_URL)."""

    def s3_options(self, connections: int = 32) -> S3Options:
        from imgvec.sources.s3 import S3Options

        return S3Options(endpoint_url=self.s3_endpoint_url, max_connections=max(10, connections))

    @property
    def state_dir(self) -> Path:
        """Run state and locks live beside the embedded store, so they move and get deleted with it."""
        return Path(self.store).expanduser() / "_imgvec"

    def load_embedder(self, model: str) -> ClipEmbedder:
        from imgvec.embed.clip import ClipEmbedder, register_model_configs
        from imgvec.embed.modelspec import parse_model_spec

        register_model_configs(self.model_config_dir)
        spec = parse_model_spec(model)
        return ClipEmbedder(spec, device=self.device, threads=self.threads, cache_dir=self.cache_dir)

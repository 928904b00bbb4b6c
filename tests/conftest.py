"""Shared fixtures: a tiny CLIP architecture with random weights, made by the tests, photo folders, and a live
OpenSearch node.

The tiny model is a real open_clip CLIP (ViT image tower, transformer text tower, 224 px, OpenAI
normalisation, 512-dim output), just narrow and shallow so a test embeds in milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgvec import wiring
from imgvec.settings import Settings

TINY_MODEL = "imgvec-tiny/random"
TINY_CONFIG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def model_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model-configs")
    (folder / "imgvec-tiny.json").write_text(json.dumps(TINY_CONFIG))
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imgvec-cache")


@pytest.fixture(scope="session")
def settings(model_config_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        store=str(tmp_path_factory.mktemp("store")),
        model=TINY_MODEL,
        threads=2,
        cache_dir=cache_dir,
        model_config_dir=str(model_config_dir),
    )


@pytest.fixture(scope="session", autouse=True)
def measured_runtime(settings: Settings) -> None:
    """The session's first model load measures the runtimes (``--runtime auto``) and caches the choice, before any
    test starts two processes at once: each would measure, and close speeds could choose differently."""
    with pytest.warns(UserWarning, match="random weights"):
        assert wiring.load_embedder(settings, TINY_MODEL).runtime.resolved


@pytest.fixture(scope="session")
def tiny_embedder(settings: Settings):
    with pytest.warns(UserWarning, match="random weights"):
        return wiring.load_embedder(settings, TINY_MODEL)


def offline_env(store: Path, model_config_dir: Path, cache_dir: Path) -> dict[str, str]:
    """Environment for running the real `imgvec` command in a subprocess, offline, on ``store``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGVEC_")}
    env.update(
        IMGVEC_STORE=str(store),
        IMGVEC_CACHE_DIR=str(cache_dir),
        IMGVEC_MODEL_CONFIG_DIR=str(model_config_dir),
        IMGVEC_THREADS="2",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def cli_env(model_config_dir: Path, cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    return offline_env(tmp_path / "store", model_config_dir, cache_dir)


@pytest.fixture(scope="module")
def module_env(model_config_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``cli_env`` shared by a module's tests, with the tiny model: one ingest serves them all (the service tests)."""
    store = tmp_path_factory.mktemp("module") / "store"
    return offline_env(store, model_config_dir, cache_dir) | {"IMGVEC_MODEL": TINY_MODEL}


class OpenSearchNode:
    """The test node that scripts/opensearch.sh runs: the same script a person uses, so the tests check it too."""

    SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "opensearch.sh"

    def __init__(self) -> None:
        # Not under pytest's tmp folder: that one is private to this user, and the node may run as another.
        self.run_dir = Path(tempfile.mkdtemp(prefix="imgvec-opensearch-"))
        self.port: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again, on the same port and data, after ``stop``)."""
        args = ["start", "--run-dir", str(self.run_dir), *(["--port", self.port] if self.port else [])]
        started = subprocess.run(["bash", str(self.SCRIPT), *args], capture_output=True, text=True, timeout=1200)
        if started.returncode != 0:
            pytest.fail(f"the test OpenSearch node did not start: {started.stderr.strip()}", pytrace=False)
        self.port = started.stdout.strip().splitlines()[-1].rsplit(":", 1)[1]

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(self.SCRIPT), "stop", "--run-dir", str(self.run_dir)], capture_output=True, timeout=120
        )


@pytest.fixture(scope="session")
def opensearch_node() -> Iterator[OpenSearchNode | None]:
    """A live OpenSearch cluster for the tests: None when OPENSEARCH_URL names one (a cluster the tests may not
    restart), else a node started for this session and stopped afterwards. IMGVEC_TEST_OPENSEARCH=skip skips the
    live tests instead; a node that cannot start fails them, so CI never passes by skipping."""
    if os.environ.get("OPENSEARCH_URL"):
        yield None
        return
    if os.environ.get("IMGVEC_TEST_OPENSEARCH") == "skip":
        pytest.skip("IMGVEC_TEST_OPENSEARCH=skip: no live OpenSearch node")
    node = OpenSearchNode()
    node.start()
    try:
        yield node
    finally:
        node.stop()
        subprocess.run(["rm", "-rf", str(node.run_dir)], check=False)


@pytest.fixture(scope="session")
def opensearch_url(opensearch_node: OpenSearchNode | None) -> str:
    return opensearch_node.url if opensearch_node is not None else os.environ["OPENSEARCH_URL"]


@pytest.fixture
def opensearch_client(opensearch_url: str):
    from imgvec.stores.opensearch_client import OpenSearchConnection, connect

    return connect(OpenSearchConnection(url=opensearch_url))


@pytest.fixture
def live_prefix(opensearch_client) -> Iterator[str]:
    """A fresh name for a test's indexes on the live node; they are deleted after it."""
    name = f"live-{uuid.uuid4().hex[:8]}"
    yield name
    opensearch_client.indices.delete(index=f"{name}-*", ignore_unavailable=True)


@pytest.fixture
def live_env(cli_env: dict[str, str], opensearch_url: str, s3) -> dict[str, str]:
    """The CLI's environment on the live node, with the module's own S3 server (its ``s3`` fixture)."""
    return {**cli_env, **s3.env(), "IMGVEC_STORE": opensearch_url, "IMGVEC_MODEL": TINY_MODEL}

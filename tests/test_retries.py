"""Who retries a write to OpenSearch, and for how long a batch can be held, on the live node behind a relay that
stops answering (docs/opensearch.md, "Who retries what"). One owner per failure kind: a whole request that fails
(no answer in time, refused, 429/5xx) is retried by the write path's ``RetryPolicy`` with backoff, never also by
the transport underneath it; items rejected with 429 inside an answered bulk by ``send_bulk``."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from imgvec.documents import SourceItem
from imgvec.pipeline.metrics import Metrics
from imgvec.pipeline.report import RunReport
from imgvec.pipeline.retry import RetryPolicy
from imgvec.pipeline.writer import BatchWriter, Vectored
from imgvec.stores import open_store
from imgvec.stores.opensearch_client import OpenSearchConnection
from imgvec.stores.opensearch_mapping import KnnIndexSettings
from tests.stallproxy import StallingProxy

TIMEOUT = 1.5
"""The client's request timeout here (60 s by default)."""
ATTEMPTS = 3


def items(start: int, count: int) -> list[SourceItem]:
    return [
        SourceItem(f"/photos/{i}.jpg", f"/photos/{i}.jpg", f"{i}.jpg", "jpg", file_size=100 + i, mtime=1.0)
        for i in range(start, start + count)
    ]


def test_a_stalled_cluster_holds_a_batch_for_the_write_paths_attempts_only(
    opensearch_url, live_prefix, tiny_embedder
) -> None:
    target = urlsplit(opensearch_url)
    with StallingProxy(target.hostname or "127.0.0.1", target.port or 9200) as proxy:
        options = OpenSearchConnection(url=proxy.url, timeout=TIMEOUT)
        store = open_store(proxy.url, f"{live_prefix}-stall", options)
        identity = tiny_embedder.identity
        store.ensure_index(identity, config=KnnIndexSettings(engine="lucene", shards=1, replicas=0))  # no faiss here
        policy = RetryPolicy(attempts=ATTEMPTS, base_seconds=0.05, max_seconds=0.1)
        report = RunReport()
        writer = BatchWriter(store, tiny_embedder, report, Metrics(), None, policy)
        rng = np.random.default_rng(7)

        def batch(start: int) -> list[Vectored]:
            vectors = rng.standard_normal((4, identity.dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            return [
                Vectored(item, f"hash{item.uri}", v, None) for item, v in zip(items(start, 4), vectors, strict=True)
            ]

        writer.write_vectors(batch(0), [False] * 4)
        assert report.embedded == 4

        proxy.stall()
        began = time.monotonic()
        writer.write_vectors(batch(4), [False] * 4)
        held = time.monotonic() - began
        proxy.resume()

    # ATTEMPTS requests of TIMEOUT each, and the policy's short backoffs between them. With the transport's own five
    # retries underneath (as before), every attempt was six requests: 3 x 6 x 1.5 s = 27 s.
    assert ATTEMPTS * TIMEOUT <= held < ATTEMPTS * TIMEOUT + 3.0, held
    assert report.embedded == 4 and report.failed == 4
    reasons = {failure.reason for failure in report.failures}
    assert len(reasons) == 1 and "did not answer in time" in reasons.pop()


def test_reads_keep_the_transports_retries(opensearch_url, live_prefix) -> None:
    """A read has one owner too, the transport: a search under a stall is tried 1 + max_retries times."""
    target = urlsplit(opensearch_url)
    with StallingProxy(target.hostname or "127.0.0.1", target.port or 9200) as proxy:
        options = OpenSearchConnection(url=proxy.url, timeout=1.0, max_retries=2)
        store = open_store(proxy.url, f"{live_prefix}-reads", options)
        proxy.stall()
        began = time.monotonic()
        with pytest.raises(Exception, match="did not answer in time"):
            store.exists()
        held = time.monotonic() - began
    assert 3 * 1.0 <= held < 3 * 1.0 + 2.0, held

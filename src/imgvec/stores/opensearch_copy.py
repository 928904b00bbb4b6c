"""How a migration copies an OpenSearch index's documents into a new one, without their vectors: ``_reindex`` inside
the cluster (or, on Serverless, pages through imgvec), then the writes that arrived meanwhile, per shard by sequence
number. Part of ``OpenSearchStore`` (a base class of it), kept apart because it is the one place that writes
outside the run's write path (``pipeline/migrate.py`` checks it by counting)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from imgvec.errors import StoreError
from imgvec.stores.opensearch_bulk import BULK_DOCUMENTS, BulkItem
from imgvec.stores.opensearch_mapping import VECTOR_FIELD, vector_fields

if TYPE_CHECKING:
    from imgvec.stores.opensearch import OpenSearchStore

PAGE_SIZE = 500
"""Documents per page: of a listing (``OpenSearchStore.documents``) and of the changes copied after ``_reindex``."""
COPY_SCRIPT = (
    "for (field in params.drop) { ctx._source.remove(field) } "
    "if (ctx._source.doc_id == null) { ctx._source.doc_id = ctx._id }"
)
"""_reindex's ``source._source`` takes only fields to keep (the spec's ``Fields``): the old vectors are dropped here."""


class IndexCopying:
    def copy_from(self: OpenSearchStore, origin_index: str, *, poll_seconds: float = 5.0) -> int:
        """Copy another index's documents here without its vectors; returns how many were copied.

        ``_reindex`` runs inside the cluster (kept ids, a ``doc_id`` added by script); Serverless has none,
        so there the documents stream through imgvec with point-in-time paging and bulk writes.
        """
        origin = self._other(origin_index)
        excluded = sorted(vector_fields(origin.mapping())) or [VECTOR_FIELD]
        if self.serverless:
            if self._count(None):
                raise StoreError(
                    f"{self.index!r} already holds documents and Serverless has no custom ids to copy idempotently: "
                    f"delete it and run the migration again"
                )
            copied = 0
            batch: list[BulkItem] = []
            for doc_id, fields in origin.documents():
                batch.append(BulkItem(doc_id, {"index": {"_index": self.index}}, {**fields, "doc_id": doc_id}))
                if len(batch) >= BULK_DOCUMENTS:
                    copied += self._copy_batch(batch)
                    batch = []
            return copied + self._copy_batch(batch)
        body = {
            "source": {"index": origin_index},
            "dest": {"index": self.index, "op_type": "create"},  # a re-run keeps the vectors filled since
            "conflicts": "proceed",
            "script": {"lang": "painless", "source": COPY_SCRIPT, "params": {"drop": excluded}},
        }
        task = self._call(self.client.reindex, body=body, params={"wait_for_completion": "false", "refresh": "true"})
        while True:
            status = self._call(self.client.tasks.get, task_id=task["task"])
            if status.get("completed"):
                break
            time.sleep(poll_seconds)
        response = status.get("response") or {}
        failures = response.get("failures") or []
        if status.get("error") or failures:
            cause = status.get("error") or failures[0]
            raise StoreError(f"_reindex from {origin_index!r} failed: {cause}")
        return int(response.get("created", 0))

    def change_mark(self: OpenSearchStore) -> dict[str, int] | None:
        if self.serverless:
            return None  # no sequence numbers to read there: the migration's count check is all there is
        stats = self._call(self.client.indices.stats, index=self.index, metric="docs", params={"level": "shards"})
        [shards] = [entry["shards"] for entry in stats["indices"].values()]
        self.optimize()  # every write up to the mark is searchable now: a copy started next sees all of them
        return {
            shard: int(copy["seq_no"]["global_checkpoint"])
            for shard, copies in shards.items()
            for copy in copies
            if copy["routing"]["primary"]
        }

    def copy_changes(self: OpenSearchStore, origin_index: str, since: dict[str, int]) -> int:
        """Per shard, the documents whose sequence number is past the mark, in sequence order (a new version of a
        document has a new number, so a document the writer replaced comes too), written over this index's copy
        without their old vectors. The origin is refreshed first: every write up to the mark is then searchable."""
        origin = self._other(origin_index)
        excluded = sorted(vector_fields(origin.mapping())) or [VECTOR_FIELD]
        origin.optimize()
        copied = 0
        for shard, mark in sorted(since.items()):
            body: dict[str, Any] = {
                "size": PAGE_SIZE,
                "query": {"range": {"_seq_no": {"gt": mark}}},
                "sort": [{"_seq_no": "asc"}],
                "_source": {"excludes": excluded},
            }
            while True:
                response = self._call(
                    self.client.search, index=origin_index, body=body, params={"preference": f"_shards:{shard}"}
                )
                hits = response["hits"]["hits"]
                batch = [
                    BulkItem(
                        hit["_id"],
                        {"index": {"_index": self.index, "_id": hit["_id"]}},
                        {**hit["_source"], "doc_id": hit["_source"].get("doc_id") or hit["_id"]},
                    )
                    for hit in hits
                ]
                copied += self._copy_batch(batch)
                if len(hits) < PAGE_SIZE:
                    break
                body["search_after"] = hits[-1]["sort"]
        return copied

    def _copy_batch(self: OpenSearchStore, batch: list[BulkItem]) -> int:
        rejected = self._bulk(batch)
        if rejected:
            raise StoreError(f"copying failed for {len(rejected)} documents, e.g. {next(iter(rejected.values()))}")
        return len(batch)

"""Duplicates, in one run: how well each kind finds a corpus's planted groups, what hashing adds to a decode, and
how long grouping takes, with how much memory, at 100k and 1 M documents.

    python benchmarks/duplicates.py [--photos 60] [--side 2000] [--scale 100000,1000000] [--store-rows 100000]
                                    [--opensearch URL --opensearch-rows 20000]

The corpus, per original (``tests/helpers.textured_photo``: coarse shapes, fine periodic detail, sensor noise):
re-saves at JPEG quality 60, 75, 90 and 95 and as PNG; resizes to 50 % and 25 %; 5 % crops (2.5 % a side); a
copy whose pixels lie sideways with EXIF Orientation 6. Every such pair is "the same picture"; every pair of
different originals is not, nor are two different framings of one scene (two windows of a larger picture that
overlap by 60 %): people keep both shots of a scene. Each file is decoded as the pipeline decodes it (reduced for
a 224 px model input, upright), then hashed.

Each original also has a byte-identical copy (the ``exact`` kind's planted pairs).

Printed: per hash and threshold, pair precision and recall (planted pairs found / all planted pairs; planted /
all pairs at or under the threshold), the distance distributions, and the hash's cost as a share of the decode;
then per kind, at its default threshold, the precision and recall of the *groups* (every pair inside a found group
counts, so a chain that joins two pictures costs precision). The ``similar`` kind is not scored here: its vectors
mean something only with trained weights, which this machine cannot download.

Scale (``--scale``): synthetic catalogues (hashes with planted near copies; clustered 512-dim vectors with planted
near pairs, float16 in a scratch file as the real view keeps them), grouped by the same code as ``imgvec
duplicates``: seconds per kind and the peak of traced allocations (numpy's included; the memory-mapped vectors are
the page cache's, not the process's). ``--store-rows``: the same through a real embedded store, scan included;
``--opensearch``: through an index on that cluster (the test node: ``scripts/opensearch.sh start``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from imgvec.documents import ImageDocument, Picture, SourceItem, signed_hash  # noqa: E402
from imgvec.duplicates import DEFAULT_THRESHOLDS, find_duplicates  # noqa: E402
from imgvec.duplicates.catalogue import NO_TIME, Catalogue  # noqa: E402
from imgvec.duplicates.components import components  # noqa: E402
from imgvec.duplicates.groups import ranked_groups  # noqa: E402
from imgvec.duplicates.pairs import hash_pairs  # noqa: E402
from imgvec.embed.decode import decode_image  # noqa: E402
from imgvec.embed.perceptual import dhash, hamming, phash  # noqa: E402
from imgvec.identity import IndexIdentity  # noqa: E402
from imgvec.stores.base import Store  # noqa: E402
from imgvec.stores.embedded import EmbeddedStore  # noqa: E402
from imgvec.stores.opensearch import OpenSearchStore  # noqa: E402
from imgvec.stores.opensearch_client import OpenSearchConnection, connect  # noqa: E402
from imgvec.stores.opensearch_mapping import KnnIndexSettings  # noqa: E402
from tests.helpers import encode, textured_photo  # noqa: E402

HASHES = {"phash": phash, "dhash": dhash}
THRESHOLDS = (4, 6, 8, 10, 12, 14, 16)


def variants(image: Image.Image) -> dict[str, bytes]:
    w, h = image.size
    crop = image.crop((int(w * 0.025), int(h * 0.025), int(w * 0.975), int(h * 0.975)))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {f"jpeg q{q}": encode(image, "JPEG", quality=q) for q in (60, 75, 90, 95)}
    out |= {
        "png": encode(image, "PNG", compress_level=1),
        "50 %": encode(image.resize((w // 2, h // 2)), "JPEG", quality=85),
        "25 %": encode(image.resize((w // 4, h // 4)), "JPEG", quality=75),
        "5 % crop": encode(crop, "JPEG", quality=85),
        "EXIF-rotated": encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes()),
    }
    return out


def scene_pair(seed: int, side: int) -> tuple[bytes, bytes]:
    """Two framings of one scene: windows of a wider picture, 60 % of their width shared."""
    width = int(side * 1.4)
    scene = textured_photo(seed, (width, side * 3 // 4))
    left = scene.crop((0, 0, side, side * 3 // 4))
    right = scene.crop((width - side, 0, width, side * 3 // 4))
    return encode(left, "JPEG", quality=90), encode(right, "JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=60, help="originals (each with its 10 other versions); 0: none")
    parser.add_argument("--scenes", type=int, default=30, help="scenes shot twice (pairs that must not match)")
    parser.add_argument("--side", type=int, default=2000, help="originals' width in pixels (4:3)")
    parser.add_argument("--scale", default="100000,1000000", help="synthetic catalogue sizes; empty: none")
    parser.add_argument("--store-rows", type=int, default=100_000, help="documents in the embedded store; 0: none")
    parser.add_argument("--opensearch", help="also through an OpenSearch index on this cluster (URL), lucene engine")
    parser.add_argument("--opensearch-rows", type=int, default=20_000, help="documents in that index")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}; {args.photos} originals of {args.side} px, "
        f"{args.scenes} scenes shot twice"
    )
    if args.photos:
        planted_corpus(args)
    for rows in [int(n) for n in args.scale.split(",") if n.strip()]:
        synthetic_scale(rows)
    if args.store_rows:
        through_the_store(args.store_rows)
    if args.opensearch:
        through_the_store(args.opensearch_rows, opensearch=args.opensearch)


def planted_corpus(args: argparse.Namespace) -> None:
    files: list[tuple[str, bytes]] = []  # (group, bytes): same group = the same picture
    for seed in range(args.photos):
        original = textured_photo(seed, (args.side, args.side * 3 // 4))
        data = encode(original, "JPEG", quality=92)
        files += [(f"p{seed}", data), (f"p{seed}", data)]  # the original and a byte-identical copy
        files += [(f"p{seed}", data) for data in variants(original).values()]
    for seed in range(args.scenes):
        left, right = scene_pair(10_000 + seed, args.side)
        files += [(f"s{seed}a", left), (f"s{seed}b", right)]

    decoded, decode_seconds = [], 0.0
    for _, data in files:
        began = time.perf_counter()
        decoded.append(decode_image(data, reduce_for=224))
        decode_seconds += time.perf_counter() - began
    groups = [group for group, _ in files]
    pairs = list(itertools.combinations(range(len(files)), 2))
    same = np.array([groups[i] == groups[j] for i, j in pairs])
    scene = np.array([groups[i][0] == "s" and groups[i][:-1] == groups[j][:-1] for i, j in pairs])
    print(
        f"{len(files)} files, {int(same.sum())} planted pairs, {len(pairs) - int(same.sum())} other pairs "
        f"({int(scene.sum())} of them two shots of one scene); decode {1000 * decode_seconds / len(files):.1f} ms"
        " per file (reduced, one core)"
    )

    for name, hash_of in HASHES.items():
        began = time.perf_counter()
        hashes = [hash_of(image) for image in decoded]
        per_file = (time.perf_counter() - began) / len(files)
        distances = np.array([hamming(hashes[i], hashes[j]) for i, j in pairs])
        print(
            f"\n[{name}] {1000 * per_file:.2f} ms per file = {per_file * len(files) / decode_seconds:.1%} of the decode"
        )
        print(
            f"  planted pairs: max {distances[same].max()}, p99 {np.percentile(distances[same], 99):.0f};"
            f"  others: min {distances[~same].min()}, p1 {np.percentile(distances[~same], 1):.0f};"
            f"  two shots of a scene: min {distances[scene].min()}"
        )
        for threshold in THRESHOLDS:
            found = distances <= threshold
            recall = (found & same).sum() / same.sum()
            precision = (found & same).sum() / max(1, found.sum())
            print(f"  <= {threshold:2d} bits: recall {recall:.4f}, precision {precision:.4f}")

    print("\n[kinds, as groups, at the default thresholds]")
    rows = len(files)
    content = np.array([int(hashlib.sha256(data).hexdigest()[:16], 16) for _, data in files], dtype=np.uint64)
    perceptual = np.array([signed_hash(phash(image)) for image in decoded], dtype=np.int64)
    identical = np.array([files[i][1] == files[j][1] for i, j in pairs])
    for kind, keys, threshold, planted in (
        ("exact", content.view(np.int64), 0, identical),
        ("resaved", perceptual, int(DEFAULT_THRESHOLDS["resaved"]), same),
    ):
        a, b, _ = hash_pairs(keys, threshold)
        labels = components(rows, a, b)
        grouped = np.array([labels[i] == labels[j] for i, j in pairs])
        recall = (grouped & planted).sum() / planted.sum()
        precision = (grouped & planted).sum() / max(1, grouped.sum())
        print(f"  {kind:8s} (<= {threshold} bits): recall {recall:.4f}, precision {precision:.4f}")
    print("  similar : not scored (random weights here; see docs/duplicates.md)")


def synthetic_catalogue(rows: int, scratch: Path, seed: int = 0) -> Catalogue:
    """Hashes and vectors with planted duplicates: 5 % byte copies, 10 % re-saves (1-8 bits flipped), 5 % near
    vectors (cosine about 0.97); the rest unrelated. Vectors in clusters, as a photo collection's are."""
    rng = np.random.default_rng(seed)
    content = rng.integers(1, 2**63 - 1, rows, dtype=np.int64)
    perceptual = rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)
    copies = rng.choice(rows, (2, rows // 20), replace=False)
    content[copies[1]] = content[copies[0]]
    perceptual[copies[1]] = perceptual[copies[0]]
    resaved = rng.choice(rows, (2, rows // 10), replace=False)
    flips = np.zeros(rows // 10, np.uint64)
    for _ in range(8):
        bit = rng.integers(0, 64, rows // 10).astype(np.uint64)
        flips |= np.where(rng.random(rows // 10) < 0.8, np.uint64(1) << bit, np.uint64(0))
    perceptual[resaved[1]] = (perceptual[resaved[0]].view(np.uint64) ^ flips).view(np.int64)

    dimension, clusters = 512, max(16, rows // 500)
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32)
    vectors = np.memmap(scratch / f"vectors-{rows}.f16", dtype=np.float16, mode="w+", shape=(rows, dimension))
    near = rng.choice(rows, (2, rows // 20), replace=False)
    source_of = np.full(rows, -1)
    source_of[near[1]] = near[0]
    for start in range(0, rows, 50_000):
        stop = min(rows, start + 50_000)
        block = centres[rng.integers(0, clusters, stop - start)] + 1.2 * rng.standard_normal(
            (stop - start, dimension)
        ).astype(np.float32)
        vectors[start:stop] = (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float16)
    targets = near[1]
    moved = vectors[near[0]].astype(np.float32) + 0.012 * rng.standard_normal((len(targets), dimension)).astype(
        np.float32
    )
    vectors[targets] = (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float16)
    vectors.flush()
    return Catalogue(
        ids=pa.array([f"{n:040x}" for n in range(rows)]),
        content=content,
        perceptual=perceptual,
        hashed=np.ones(rows, bool),
        size=rng.integers(500_000, 8_000_000, rows),
        pixels=rng.choice([12_000_000, 3_000_000, 800_000], rows),
        taken=np.where(rng.random(rows) < 0.7, rng.integers(0, 2**50, rows), NO_TIME),
        path_length=rng.integers(20, 90, rows).astype(np.int32),
        vectors=vectors,
    )


def measured(work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``work(*args, **kwargs)``, its seconds, and the peak of traced allocations in MB."""
    tracemalloc.start()
    began = time.perf_counter()
    result = work(*args, **kwargs)
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return result, seconds, peak


def synthetic_scale(rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="imgvec-bench-") as scratch:
        began = time.perf_counter()
        catalogue = synthetic_catalogue(rows, Path(scratch))
        print(f"\n[{rows:,} documents, synthetic] made in {time.perf_counter() - began:.0f} s")
        for kind in ("exact", "resaved", "similar"):
            threshold = DEFAULT_THRESHOLDS.get(kind)
            (groups, _), seconds, peak = measured(ranked_groups, catalogue, kind, threshold)
            members = sum(len(group) for group in groups)
            print(
                f"  {kind:8s}: {seconds:7.1f} s, peak {peak:6.0f} MB traced; {len(groups):,} groups, "
                f"{members:,} members"
            )


def through_the_store(rows: int, *, opensearch: str | None = None) -> None:
    """``imgvec duplicates`` as it runs: a real store (embedded, or an OpenSearch index), read by its scan."""
    with tempfile.TemporaryDirectory(prefix="imgvec-bench-store-") as folder:
        catalogue = synthetic_catalogue(rows, Path(folder), seed=1)
        identity = IndexIdentity("bench/random", "bench", "random", 512)
        store: Store
        if opensearch:
            client = connect(OpenSearchConnection(url=opensearch))
            store = OpenSearchStore(client, f"bench-duplicates-{rows}")
            client.indices.delete(index=store.index, ignore_unavailable=True)
            store.ensure_index(identity, config=KnnIndexSettings(engine="lucene", shards=1, replicas=0))
        else:
            store = EmbeddedStore(Path(folder) / "store", "images")
            store.ensure_index(identity)
        began = time.perf_counter()
        for start in range(0, rows, 10_000):
            documents = [
                ImageDocument(
                    SourceItem.of_path(f"/nas/{n // 1000}/{n}.jpg", int(catalogue.size[n]), 0.0),
                    np.asarray(catalogue.vectors[n], dtype=np.float32),
                    f"{int(catalogue.content[n]) & (2**64 - 1):016x}" + "0" * 48,
                    identity.model,
                    Picture(int(catalogue.perceptual[n]), 4000, 3000),
                )
                for n in range(start, min(rows, start + 10_000))
            ]
            assert store.upsert(documents) == {}  # OpenSearch: bulk requests sized by the store
        store.optimize()
        where = f"the OpenSearch index {store.index}" if opensearch else "the embedded store"
        print(f"\n[{rows:,} documents in {where}] written in {time.perf_counter() - began:.0f} s")
        for kind in ("exact", "resaved", "similar"):
            found, seconds, peak = measured(find_duplicates, store, kind, scratch=Path(folder))
            print(f"  {kind:8s}: {seconds:7.1f} s, peak {peak:6.0f} MB traced; {len(found):,} groups")


if __name__ == "__main__":
    main()

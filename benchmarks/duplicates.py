"""Perceptual hashes on a corpus with planted groups: how well "the same picture saved again" is found, at which
Hamming threshold, and what hashing adds to a decode. The first part of issue 30's benchmark (the hash the
``resaved`` kind will group by); the 100k / 1 M grouping times come with the grouping itself.

    python benchmarks/duplicates.py [--photos 60] [--side 2000]

The corpus, per original (``tests/helpers.textured_photo``: coarse shapes, fine periodic detail, sensor noise):
re-saves at JPEG quality 60, 75, 90 and 95 and as PNG; resizes to 50 % and 25 %; 5 % crops (2.5 % a side); a
copy whose pixels lie sideways with EXIF Orientation 6. Every such pair is "the same picture"; every pair of
different originals is not, nor are two different framings of one scene (two windows of a larger picture that
overlap by 60 %): people keep both shots of a scene. Each file is decoded as the pipeline decodes it (reduced for
a 224 px model input, upright), then hashed.

Printed: per hash and threshold, pair precision and recall (planted pairs found / all planted pairs; planted /
all pairs at or under the threshold), the distance distributions, and the hash's cost as a share of the decode.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgvec.embed.decode import decode_image  # noqa: E402
from imgvec.embed.perceptual import dhash, hamming, phash  # noqa: E402
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
    parser.add_argument("--photos", type=int, default=60, help="originals (each with its 9 re-saved versions)")
    parser.add_argument("--scenes", type=int, default=30, help="scenes shot twice (pairs that must not match)")
    parser.add_argument("--side", type=int, default=2000, help="originals' width in pixels (4:3)")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}; {args.photos} originals of {args.side} px, "
        f"{args.scenes} scenes shot twice"
    )

    files: list[tuple[str, bytes]] = []  # (group, bytes): same group = the same picture
    for seed in range(args.photos):
        original = textured_photo(seed, (args.side, args.side * 3 // 4))
        files.append((f"p{seed}", encode(original, "JPEG", quality=92)))
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


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Prepares .gpu-carry/: what benchmarks/gpu.py needs on the GPU machine beyond what that machine has
# (../shared/GPU_NOTES.md: Python 3.12 with torch, torchvision, numpy, pillow, pyarrow; no open_clip, lancedb or
# pydantic, and nothing downloadable there). Wheels for CPython 3.12 manylinux, at the versions this checkout's
# venv runs; lancedb's one large library compressed with xz, since its wheel alone would pass the 64 MiB a device
# call carries. Then, with the device tool: run(command="bash scripts/gpu-bench.sh", carry=[".gpu-carry"]).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-carry
py=${PYTHON:-.venv/bin/python}
mkdir -p .git/info
grep -qxF "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >>.git/info/exclude
rm -rf "$out"
mkdir -p "$out/wheels" "$out/lancedb"

pinned() { # name==version of each package as this venv has it
  for name in "$@"; do
    "$py" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$name"
  done
}
packages=$(pinned open_clip_torch ftfy wcwidth regex pydantic pydantic_core annotated-types typing-inspection \
  annotated-doc lance-namespace lance-namespace-urllib3-client deprecation overrides lancedb)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out/wheels" $packages

# lancedb: its Python files as they are, its native library as .xz (unpacked there by scripts/gpu-bench.sh)
wheel=$(ls "$out"/wheels/lancedb-*.whl)
"$py" - "$wheel" "$out/lancedb" <<'PY'
import lzma, sys, zipfile
from pathlib import Path

wheel, target = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        data = archive.read(name)
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".so"):
            path = path.with_name(path.name + ".xz")
            data = lzma.compress(data, preset=6)
        path.write_bytes(data)
PY
rm "$wheel"
du -sh "$out"
echo "carry $out with: run(command=\"bash scripts/gpu-bench.sh\", carry=[\"$out\"], timeout_s=540)"

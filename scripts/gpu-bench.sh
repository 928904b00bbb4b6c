#!/usr/bin/env bash
# On the GPU machine (the device tool), with .gpu-carry/ from scripts/gpu-carry.sh: install what was carried into
# /tmp/site, check imgvec imports, run benchmarks/gpu.py once, and leave its output in $OUT for the table in
# docs/performance.md. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
site=/tmp/site
out=${OUT:-/tmp/gpu-out}
mkdir -p "$site" "$out"
python -m pip install -q --no-index --no-deps --target "$site" .gpu-carry/wheels/*.whl
cp -r .gpu-carry/lancedb/. "$site/"
python - "$site" <<'PY'
import lzma, sys
from pathlib import Path

for packed in Path(sys.argv[1]).rglob("*.so.xz"):
    packed.with_suffix("").write_bytes(lzma.decompress(packed.read_bytes()))
    packed.unlink()
PY
export PYTHONPATH="$site:src" HF_HUB_OFFLINE=1
{ nvidia-smi; lscpu | grep -E "Model name|^CPU\(s\)"; uptime; } >"$out/machine.txt" 2>&1 || true
python -c "import imgvec.wiring, lancedb, open_clip, torch, torchvision; print('imports ok', torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))"
python benchmarks/gpu.py --work /tmp/gpu-work "$@" 2>&1 | tee "$out/gpu.txt"

#!/usr/bin/env bash
# Fresh machine → install, make a small photo folder, index it into the embedded store, search it.
# Everything lands in ./demo-output (or $IMGVEC_DEMO_DIR); your ~/.imgvec is not touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/install.sh

OUT="${IMGVEC_DEMO_DIR:-$ROOT/demo-output}"
PHOTOS="$OUT/photos"
[ -d "$PHOTOS" ] || "$VENV/bin/python" scripts/make_demo_photos.py "$PHOTOS"
MODEL="$("$VENV/bin/python" scripts/pick_demo_model.py)"
export IMGVEC_STORE="$OUT/store" IMGVEC_INDEX="demo-${MODEL//[^A-Za-z0-9]/-}"
imgvec() { "$VENV/bin/imgvec" --model "$MODEL" "$@"; }

echo; echo "\$ imgvec ingest $PHOTOS"
imgvec ingest "$PHOTOS"
echo; echo "\$ imgvec status"
imgvec status
QUERY="$PHOTOS/red/red-circle-1.jpg"
echo; echo "\$ imgvec search --image $QUERY -k 5      # the query image itself comes back first, score ~1.0"
imgvec search --image "$QUERY" -k 5
echo; echo "\$ imgvec search \"a yellow triangle\" -k 5"
imgvec search "a yellow triangle" -k 5
echo; echo "\$ imgvec ingest $PHOTOS      # again: nothing changed, nothing re-embedded"
imgvec ingest "$PHOTOS"
echo; echo "Browse it: $VENV/bin/imgvec --store $IMGVEC_STORE --index $IMGVEC_INDEX serve   # then http://127.0.0.1:8000"

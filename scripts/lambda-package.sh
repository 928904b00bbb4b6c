#!/usr/bin/env bash
# Build imgvec's Lambda deployment artifacts from this checkout (docs/aws.md):
#   OUT/image/            a container-image context: Dockerfile on AWS's Lambda Python base image, the imgvec
#                         wheel, the function's requirements (no torch) and the exported model baked in.
#                         Deploy: docker build -t imgvec-lambda OUT/image (then push to ECR, see docs/aws.md).
#   OUT/imgvec-lambda.zip with --zip, when the function fits Lambda's 250 MB unzipped limit: the int8 model only
#                         and no OpenVINO (ONNX Runtime runs it), for the python runtime of --python.
#
# Usage: scripts/lambda-package.sh [--model MODEL] [--out DIR] [--zip] [--python 3.12]
# MODEL defaults to $IMGVEC_MODEL, else ViT-B-32/openai (its weights must be reachable or cached here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${IMGVEC_MODEL:-ViT-B-32/openai}"
OUT="$ROOT/build/lambda"
ZIP=0
PY_VERSION="3.12"
ZIP_LIMIT=$((250 * 1000 * 1000))

while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --zip) ZIP=1; shift ;;
    --python) PY_VERSION="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$PY_VERSION" in
  3.12|3.13) ;;
  3.11) echo "note: Lambda's python3.11 runtime (glibc 2.26) cannot load onnxruntime's wheels; deploy 3.12" >&2 ;;
  *) echo "--python $PY_VERSION: imgvec's function runs on Lambda's python 3.12 or 3.13" >&2; exit 2 ;;
esac

source "$ROOT/scripts/install.sh"  # exporting the model needs torch, here only
IMAGE="$OUT/image"
rm -rf "$IMAGE" "$OUT/zip" "$OUT/imgvec-lambda.zip"
mkdir -p "$IMAGE/wheels"

echo "exporting $MODEL's image tower (torch → ONNX, int8) into $IMAGE/model" >&2
"$VENV/bin/imgvec" --model "$MODEL" export-model "$IMAGE/model"
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$IMAGE/wheels" "$ROOT" >&2
WHEEL="$(ls "$IMAGE"/wheels/imgvec-*.whl)"

# What the handler imports, and nothing else: no torch, open_clip, LanceDB, pyarrow, FastAPI or Ray; boto3 comes
# with the runtime. opensearch-py (for useCache on OpenSearch) without its gRPC transport (grpcio, protobufs: 25 MB
# the HTTP client never imports). OpenVINO is in the image (the probe may have chosen it); the zip leaves it out.
cat > "$IMAGE/requirements.txt" <<'EOF'
numpy>=1.26
pillow>=11
pillow-heif>=0.18
onnxruntime>=1.20
requests>=2.31
urllib3>=1.26
certifi
python-dateutil>=2.8,<3
Events
openvino>=2025.1
EOF

cat > "$IMAGE/Dockerfile" <<EOF
# imgvec as the cis-image-embedding function (docs/aws.md). Built by scripts/lambda-package.sh.
FROM public.ecr.aws/lambda/python:${PY_VERSION}
COPY requirements.txt wheels/ /tmp/imgvec/
RUN pip install --no-cache-dir -r /tmp/imgvec/requirements.txt \\
 && pip install --no-cache-dir --no-deps "opensearch-py>=2.8" /tmp/imgvec/$(basename "$WHEEL") \\
 && rm -rf /tmp/imgvec
COPY model \${LAMBDA_TASK_ROOT}/model
ENV IMGVEC_MODEL_BUNDLE=\${LAMBDA_TASK_ROOT}/model
CMD ["imgvec.aws.lambda_handler.handler"]
EOF
echo "image context: $IMAGE (docker build -t imgvec-lambda $IMAGE)" >&2

if [ "$ZIP" = 1 ]; then
  BUILD="$OUT/zip"
  mkdir -p "$BUILD"
  echo "zip: the int8 model and python $PY_VERSION x86_64 wheels into $BUILD" >&2
  "$VENV/bin/imgvec" --model "$MODEL" export-model --no-fp32 "$BUILD/model" >/dev/null
  grep -v '^openvino' "$IMAGE/requirements.txt" > "$OUT/requirements-zip.txt"
  # Lambda's python3.12 and 3.13 runtimes run on Amazon Linux 2023 (glibc 2.34): any manylinux wheel up to 2_34.
  PLATFORMS=()
  for tag in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
    PLATFORMS+=(--platform "${tag}_x86_64")
  done
  "$VENV/bin/python" -m pip install -q --target "$BUILD" "${PLATFORMS[@]}" --implementation cp \
    --python-version "$PY_VERSION" --only-binary=:all: -r "$OUT/requirements-zip.txt" >&2
  "$VENV/bin/python" -m pip install -q --target "$BUILD" "${PLATFORMS[@]}" --implementation cp \
    --python-version "$PY_VERSION" --only-binary=:all: --no-deps "opensearch-py>=2.8" "$WHEEL" >&2
  find "$BUILD" -name "__pycache__" -type d -prune -exec rm -rf {} +
  SIZE=$(du -sb "$BUILD" | cut -f1)
  if [ "$SIZE" -gt "$ZIP_LIMIT" ]; then
    echo "no zip: the function is $((SIZE / 1000000)) MB unzipped, over Lambda's 250 MB; deploy the image" >&2
    exit 0
  fi
  (cd "$BUILD" && "$VENV/bin/python" -c "
import os, zipfile
with zipfile.ZipFile('../imgvec-lambda.zip', 'w', zipfile.ZIP_DEFLATED) as out:
    for folder, _, files in os.walk('.'):
        for name in files:
            out.write(os.path.join(folder, name))
")
  echo "zip: $OUT/imgvec-lambda.zip ($((SIZE / 1000000)) MB unzipped, $(($(stat -c %s "$OUT/imgvec-lambda.zip") / 1000000)) MB zipped)" >&2
fi

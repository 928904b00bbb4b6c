#!/usr/bin/env bash
# Create .venv and install imgvec with what the tests need. Idempotent: reinstalls only when pyproject.toml changes.
# Sourced by scripts/demo.sh and scripts/test.sh; leaves VENV set to the environment's path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IMGVEC_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "imgvec needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

stamp="$VENV/.imgvec-installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing imgvec into $VENV (first run: torch is large, this takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # The exact torch/torchvision pair open_clip needs; see pyproject.toml.
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import imgvec.cli, open_clip, lancedb, torchvision" \
    || { echo "installation failed: see the pip output above" >&2; exit 1; }
  rm -f "$VENV"/.imgvec-installed-*
  touch "$stamp"
fi

# The AWS Lambda Runtime Interface Emulator, for the tests that run imgvec's handler under the real runtime: a Go
# module (no binary is published for download here), built once into the environment.
RIE_VERSION="v0.0.0-20261030222936-bef5c4ba774d"
if [ ! -x "$VENV/bin/aws-lambda-rie" ]; then
  GO="$(command -v go || echo /usr/local/go/bin/go)"
  if [ ! -x "$GO" ]; then
    echo "installing Go (apt-get) to build the Lambda runtime emulator" >&2
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-go >/dev/null
    GO="$(command -v go || echo go)"
  fi
  echo "building aws-lambda-rie ($RIE_VERSION) into $VENV/bin" >&2
  GOBIN="$VENV/bin" GOFLAGS=-mod=mod "$GO" install \
    "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$RIE_VERSION" >&2 \
    || { echo "could not build aws-lambda-rie: the Lambda tests need it (Go and the Go module proxy)" >&2; exit 1; }
fi
export VENV

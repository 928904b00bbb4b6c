#!/usr/bin/env bash
# Fresh machine → the whole test suite: install, lint, test. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/install.sh

"$VENV/bin/ruff" check src tests benchmarks scripts
"$VENV/bin/ruff" format --check src tests benchmarks scripts
# HF_HUB_OFFLINE: the tests build their own models and must never wait on a model hub.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest "$@"

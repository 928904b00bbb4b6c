#!/usr/bin/env bash
# Fresh machine → the whole test suite: install, lint, test. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/install.sh

# The page tests drive Debian's chromium through Playwright (`playwright install` cannot download here).
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium for the page tests (apt-get)" >&2
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    || { echo "could not install chromium: the page tests need /usr/bin/chromium" >&2; exit 1; }
fi

"$VENV/bin/ruff" check src tests benchmarks scripts
"$VENV/bin/ruff" format --check src tests benchmarks scripts
# HF_HUB_OFFLINE: the tests build their own models and must never wait on a model hub.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest "$@"

"""Print the model the demo should use: real ViT-B-32/openai weights when they can be had (already in the local
cache, or the model hub answers), otherwise ViT-B-32/random, saying why in one line on stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import urlparse

REAL = "ViT-B-32/openai"
FALLBACK = "ViT-B-32/random"


def in_local_cache() -> bool:
    code = (
        f"from imgvec import wiring; from imgvec.settings import Settings; wiring.load_embedder(Settings(), {REAL!r})"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False).returncode == 0


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


if __name__ == "__main__":
    if in_local_cache():
        print(f"demo model: {REAL} (cached weights)", file=sys.stderr)
        print(REAL)
    elif hub_reachable():
        print(f"demo model: {REAL} (downloading weights once, ~600 MB)", file=sys.stderr)
        print(REAL)
    else:
        print(
            f"demo model: {FALLBACK}: real CLIP weights are not cached and the model hub is unreachable, so the "
            "pipeline runs end to end with random weights (results are not meaningful; see README 'Model weights')",
            file=sys.stderr,
        )
        print(FALLBACK)

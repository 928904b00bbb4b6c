"""Weights that come from the Hugging Face hub: present in the local cache, or a hub that answers, or one line.

Machines next to a NAS are often offline. Left to itself, the hub client retries each file five times with backoff
and prints every retry twice, so an offline `imgvec ingest` spent 51 s and 44 lines before its one error. Checked
here first: weights already in the local cache load as before; otherwise one request with a short time-out says
whether the hub can be reached at all.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from imgvec.embed.modelspec import ModelSpec, WeightsKind
from imgvec.errors import ModelLoadError

HUB_CHECK_SECONDS = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def require_weights(spec: ModelSpec) -> None:
    """Return when the weights ``spec`` names are cached or the hub answers; else ModelLoadError in one line."""
    needed = hub_files(spec)
    if needed is None or all(_cached(repo, names) for repo, names in needed):
        return
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    why = "HF_HUB_OFFLINE is set" if _offline() else unreachable(endpoint)
    if why is None:
        return
    architecture = spec.architecture.removeprefix("hf-hub:")
    local = (
        f"--model {architecture}//PATH/TO/open_clip_pytorch_model.bin"
        if spec.weights is WeightsKind.TAG
        else ("--model local-dir:PATH")
    )
    raise ModelLoadError(
        f"the weights of {spec.text} are not in the local Hugging Face cache and the hub cannot be used ({why}): "
        f"pre-fetch them (README, 'Model weights'), use a local copy ({local}), "
        f"or {architecture.split('/')[-1]}/random for a run without real weights"
    )


def hub_files(spec: ModelSpec) -> list[tuple[str, tuple[str, ...]]] | None:
    """(repo, acceptable file names) for each file the model needs from the hub; None when it needs none."""
    if spec.weights is WeightsKind.HF_HUB:
        repo = spec.architecture.removeprefix("hf-hub:")
        return [(repo, ("open_clip_config.json",)), (repo, WEIGHT_FILES)]
    if spec.weights is not WeightsKind.TAG:
        return None
    import open_clip

    location = (open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained) or {}).get("hf_hub")
    if not location:
        return None  # a tag open_clip fetches from a plain URL into its own cache: left to open_clip
    repo, name = os.path.split(location)
    names = (name, *_safetensors_for(name)) if name else WEIGHT_FILES
    return [(repo, names)]


def _safetensors_for(name: str) -> tuple[str, ...]:
    if name == "open_clip_pytorch_model.bin":
        return ("open_clip_model.safetensors",)
    if name.endswith((".bin", ".pth", ".pt")):
        return (name.rsplit(".", 1)[0] + ".safetensors",)
    return ()


def _cached(repo: str, names: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def unreachable(endpoint: str, timeout: float = HUB_CHECK_SECONDS) -> str | None:
    """Why ``endpoint`` cannot be reached, or None when it answers (any HTTP status is an answer)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        return f"{endpoint} cannot be reached: {cause}"

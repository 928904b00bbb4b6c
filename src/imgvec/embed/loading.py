"""What it takes to load a model, as plain data, and the one function that loads it.

``ModelConfig`` is all a process needs to embed (a Ray actor on another node, a Lambda): the model and how to
run it, never a store's address or credentials. The wiring builds one from the settings; a remote worker gets
it pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgvec.embed.clip import ClipEmbedder
    from imgvec.embed.runtime import RuntimeChoice


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model: str
    """A ``--model`` string (``embed/modelspec.py``)."""
    device: str = "auto"
    runtime: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    cache_dir: str | Path | None = None
    model_config_dir: str | None = None

    def runtime_choice(self) -> RuntimeChoice:
        return runtime_choice(self.device, self.runtime, self.precision)


def runtime_choice(device: str, runtime: str, precision: str) -> RuntimeChoice:
    """``--device``, ``--runtime``, ``--precision`` → what runs the model (raises ``RuntimeChoiceError``)."""
    from imgvec.embed.runtime import choose

    return choose(device, runtime, precision)


def load_embedder(config: ModelConfig) -> ClipEmbedder:
    from imgvec.embed.clip import ClipEmbedder, register_model_configs
    from imgvec.embed.modelspec import parse_model_spec

    register_model_configs(config.model_config_dir)
    spec = parse_model_spec(config.model)
    runtime = config.runtime_choice()
    return ClipEmbedder(spec, runtime=runtime, threads=config.threads, cache_dir=config.cache_dir)

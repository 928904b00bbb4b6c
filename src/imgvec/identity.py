"""What an index's vectors mean: which model made them, in how many dimensions, prepared how.

An index records its identity once, when it is created; every later write and query is checked against it.
Vectors from two models share no geometry, so a mixed index returns confident nonsense rather than an
error. Refusing the write is the only safe behaviour.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from imgvec.errors import IdentityMismatchError


@dataclass(frozen=True, slots=True)
class IndexIdentity:
    model: str
    """The model spec as the user wrote it, e.g. ``ViT-B-32/openai``."""
    architecture: str
    pretrained: str
    dimension: int
    normalized: bool = True
    preprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return self.pretrained == "random"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexIdentity:
        data = json.loads(text)
        return cls(
            model=data["model"],
            architecture=data["architecture"],
            pretrained=data["pretrained"],
            dimension=int(data["dimension"]),
            normalized=bool(data.get("normalized", True)),
            preprocess=dict(data.get("preprocess", {})),
        )

    def describe(self) -> str:
        return f"{self.model} ({self.dimension}-dim{', random weights' if self.random_weights else ''})"

    def compatible(self, incoming: IndexIdentity) -> bool:
        """Vectors described by ``incoming`` may be mixed with (and stand in for) this index's vectors."""
        return not self._differences(incoming)

    def _differences(self, incoming: IndexIdentity) -> list[str]:
        problems = []
        if incoming.dimension != self.dimension:
            problems.append(f"dimension {incoming.dimension} != {self.dimension}")
        if (incoming.architecture, incoming.pretrained) != (self.architecture, self.pretrained):
            problems.append(f"model {incoming.model!r} != {self.model!r}")
        if incoming.normalized != self.normalized:
            problems.append("normalisation differs")
        return problems

    def require_compatible(self, incoming: IndexIdentity, *, action: str = "write") -> None:
        """Raise unless vectors described by ``incoming`` may be mixed with this index's vectors."""
        problems = self._differences(incoming)
        if problems:
            raise IdentityMismatchError(
                f"refusing to {action}: the index holds vectors of {self.describe()}, "
                f"but the model in use is {incoming.describe()} ({'; '.join(problems)}). "
                f"Use --model {self.model} for this index, or a new index for the other model."
            )

    def require_dimension(self, dimension: int) -> None:
        if dimension != self.dimension:
            raise IdentityMismatchError(f"refusing to write {dimension}-dim vectors into an index of {self.describe()}")

"""How a long-running loop (``watch``, ``ingest --missing --follow``) outlives a store, a share or a cluster that
fails for a while: each failed step is logged and counted, the next try waits longer (exponential, capped), and the
first success after failures says so. Only a model/index mismatch, which no retry can fix, ends the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imgvec.errors import IdentityMismatchError

ERROR_BACKOFF_SECONDS = 2.0
ERROR_BACKOFF_MAX_SECONDS = 300.0


class Recovery:
    def __init__(self, log: Callable[[str], None], *, then: str = "") -> None:
        """``then``: what happens after the pause, appended to the error line (", then a pass catches up")."""
        self.log = log
        self.then = then
        self.errors_in_a_row = 0
        self.last_error: str | None = None

    def attempt(self, step: Callable[[], None]) -> bool:
        """Run ``step``; False (logged, counted) when it failed."""
        try:
            step()
        except IdentityMismatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged with its type; the loop goes on and catches up
            self.errors_in_a_row += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log(f"error: {self.last_error}; retrying in {self.pause(0.0):g}s{self.then}")
            return False
        if self.errors_in_a_row:
            self.log("recovered")
        self.errors_in_a_row = 0
        return True

    def pause(self, normal: float) -> float:
        """``normal`` while all is well; after failures, exponential backoff."""
        if not self.errors_in_a_row:
            return normal
        return min(ERROR_BACKOFF_MAX_SECONDS, ERROR_BACKOFF_SECONDS * 2 ** (self.errors_in_a_row - 1))

    def health(self) -> dict[str, Any]:
        return {"errors_in_a_row": self.errors_in_a_row, "last_error": self.last_error}

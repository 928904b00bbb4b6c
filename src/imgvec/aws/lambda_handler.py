"""The Lambda entry point, at the import path the function is configured with:
``imgvec.aws.lambda_handler.handler``.

The worker's call, ``{"imageUrl": …, "useCache": true}``, is answered as ``POST /api/embed`` answers it; a batch
from ``--executor lambda``, ``{"items": […]}``, per item (``aws/function.py``). The model loads on the first
invocation, not at import: a bundle that cannot load is then an error payload saying why, on every call, instead
of a runtime that fails to start and answers only "Runtime.ImportModuleError". Nothing here imports torch.
"""

from __future__ import annotations

import logging
from typing import Any

from imgvec.aws.function import EmbeddingFunction, FunctionConfig, error_payload

log = logging.getLogger("imgvec.aws")
_function: EmbeddingFunction | None = None


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    global _function
    try:
        if not isinstance(event, dict):
            raise_bad_event(event)
        if _function is None:
            _function = EmbeddingFunction(FunctionConfig.from_environment())
        if "items" in event:
            return _function.embed_batch(event)
        if "imageUrl" in event:
            return _function.embed_one(event)
        raise_bad_event(event)
    except Exception as exc:
        log.warning("%s", error_payload(exc)["error"])
        log.debug("details", exc_info=True)
        return error_payload(exc)


def raise_bad_event(event: Any) -> Any:
    from imgvec.errors import UsageError

    raise UsageError(
        "expected {'imageUrl': 's3://bucket/key', 'useCache': true} or {'items': [{'id', 'bucket', 'key'}]}, "
        f"not {str(event)[:200]}"
    )

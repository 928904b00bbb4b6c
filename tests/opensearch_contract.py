"""Contract-test kit: the official OpenSearch API specification, and a transport-level recorder.

The recorder replaces only the socket: opensearch-py's client, serializer, gzip and SigV4 signing all run, and
each request that would have left the machine is parsed, recorded and checked against the OpenAPI spec in
``../shared/opensearch-api/`` (path, method, query parameters, body schema, plus unknown keys the spec's open
schemas let through). Answers come from handlers the tests register; each answer is checked against the
spec's response schema, so imgvec is tested on response shapes a real cluster produces.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SPEC_DIR = Path(os.environ.get("OPENSEARCH_API_SPEC", Path(__file__).resolve().parents[2] / "shared/opensearch-api"))
SPEC_FILE = SPEC_DIR / "opensearch-openapi.yaml"
SPEC_URN = "urn:opensearch-api"


@cache
def load_spec() -> dict[str, Any]:
    import yaml

    with open(SPEC_FILE) as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    headers: dict[str, str]
    operation: str = ""


class SpecValidator:
    def __init__(self, spec: dict[str, Any]) -> None:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.spec = spec
        self.registry = Registry().with_resource(
            SPEC_URN, Resource.from_contents(spec, default_specification=DRAFT202012)
        )
        self._templates = sorted(
            ((template, _template_regex(template)) for template in spec["paths"]),
            key=lambda pair: pair[0].count("{"),
        )

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node and len(node) <= 2:
            node = self._pointer(node["$ref"])
        return node

    def _pointer(self, ref: str) -> Any:
        node: Any = self.spec
        for part in ref.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, regex in self._templates:
            if regex.match(path) and method.lower() in self.spec["paths"][template]:
                return template, self.spec["paths"][template][method.lower()]
        raise AssertionError(f"{method} {path}: no such operation in the OpenSearch API spec")

    def errors(self, request: Request) -> list[str]:
        template, operation = self.operation(request.method, request.path)
        request.operation = operation.get("operationId", template)
        where = f"{request.method} {request.path} ({request.operation})"
        problems = []
        declared = {
            self.resolve(p)["name"] for p in operation.get("parameters", []) if self.resolve(p)["in"] == "query"
        }
        for name in request.params:
            if name not in declared:
                problems.append(f"{where}: query parameter {name!r} is not in the spec")
        body_spec = self.resolve(operation.get("requestBody"))
        if request.body is None:
            if body_spec and body_spec.get("required"):
                problems.append(f"{where}: the spec requires a body")
            return problems
        if not body_spec:
            return [*problems, f"{where}: sends a body the spec does not take"]
        content_type = next(iter(body_spec["content"]))
        pointer = self._ref_of(body_spec, content_type)
        if content_type == "application/x-ndjson":
            problems += self._check_ndjson(where, request.body)
        problems += [f"{where}: {e}" for e in self.schema_errors(pointer, request.body)]
        return problems

    def _ref_of(self, body_spec: dict[str, Any], content_type: str) -> str:
        for name, candidate in self.spec["components"]["requestBodies"].items():
            if candidate is body_spec:
                return f"#/components/requestBodies/{name}/content/{content_type.replace('/', '~1')}/schema"
        raise AssertionError("inline request bodies are not used by the operations imgvec calls")

    def _check_ndjson(self, where: str, lines: list[Any]) -> list[str]:
        problems = []
        position = 0
        while position < len(lines):
            action = lines[position]
            problems += [
                f"{where}: line {position}: {e}"
                for e in self.schema_errors("#/components/schemas/_core.bulk___OperationContainer", action)
            ]
            kind = next(iter(action))
            if kind == "delete":
                position += 1
                continue
            payload = lines[position + 1]
            if kind == "update":
                problems += [
                    f"{where}: line {position + 1}: {e}"
                    for e in self.schema_errors("#/components/schemas/_core.bulk___UpdateAction", payload)
                ]
            position += 2
        return problems

    def schema_errors(self, pointer: str, instance: Any) -> list[str]:
        validator = _lenient_one_of()({"$ref": SPEC_URN + pointer}, registry=self.registry)
        found = [
            f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message[:300]}"
            for e in validator.iter_errors(instance)
        ]
        return found + self.unknown_keys(self._pointer(pointer), instance, "")

    def response_errors(self, request: Request, status: int, body: Any) -> list[str]:
        _, operation = self.operation(request.method, request.path)
        response = self.resolve((operation.get("responses") or {}).get(str(status)))
        if not response or "content" not in response or body is None:
            return []
        for name, candidate in self.spec["components"]["responses"].items():
            if candidate is response:
                content_type = next(iter(response["content"]))
                pointer = f"#/components/responses/{name}/content/{content_type.replace('/', '~1')}/schema"
                return [f"response {e}" for e in self.schema_errors(pointer, body) if "is not in the spec" not in e]
        return []

    def unknown_keys(self, schema: Any, instance: Any, path: str) -> list[str]:
        """Keys the spec names nowhere for this object. The spec's schemas are open (no additionalProperties:
        false), so a misspelt ``"vectr"`` would otherwise validate; this walk is what makes a typo fail."""
        if isinstance(instance, list):
            items = self._collect(schema, "items")
            return [
                e
                for item_schema in items
                for i, v in enumerate(instance)
                for e in self.unknown_keys(item_schema, v, f"{path}/{i}")
            ][:20]
        if not isinstance(instance, dict):
            return []
        named, open_ended, property_schemas = self._properties(schema, instance)
        problems = []
        extra = [a for a in self._collect(schema, "additionalProperties") if isinstance(a, dict) and a]
        for key, value in instance.items():
            if key in named:
                for sub in property_schemas[key]:
                    problems += self.unknown_keys(sub, value, f"{path}/{key}")
            elif extra:
                for sub in extra:
                    problems += self.unknown_keys(sub, value, f"{path}/{key}")
            elif not open_ended:
                problems.append(f"{path or '<body>'}: key {key!r} is not in the spec")
        return problems

    def _collect(self, schema: Any, keyword: str) -> list[Any]:
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return []
        found = [schema[keyword]] if keyword in schema else []
        for combinator in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(combinator, []):
                found += self._collect(sub, keyword)
        return found

    def _matches(self, schema: Any, instance: Any) -> bool:
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return True
        return _lenient_one_of()(_absolute_refs(schema), registry=self.registry).is_valid(instance)

    def _properties(self, schema: Any, instance: Any) -> tuple[set[str], bool, dict[str, list[Any]]]:
        """Names declared for an object across $ref/allOf/anyOf/oneOf; open when any branch allows more.
        Of a union's branches only those the instance validates against count (a mapping property is
        checked as the one property type its ``type`` names, not as the union of all of them)."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return set(), True, {}
        named: set[str] = set()
        schemas: dict[str, list[Any]] = {}
        open_ended = False
        if "properties" in schema:
            for key, sub in schema["properties"].items():
                named.add(key)
                schemas.setdefault(key, []).append(sub)
        if schema.get("additionalProperties") not in (None, False) or "patternProperties" in schema:
            open_ended = True
        if "propertyNames" in schema:
            open_ended = True
        branches = list(schema.get("allOf", []))
        for combinator in ("anyOf", "oneOf"):
            options = schema.get(combinator, [])
            branches += [b for b in options if self._matches(b, instance)] or options
        for branch in branches:
            sub_named, sub_open, sub_schemas = self._properties(branch, instance)
            named |= sub_named
            open_ended |= sub_open
            for key, subs in sub_schemas.items():
                schemas.setdefault(key, []).extend(subs)
        if not named:
            open_ended = True  # a free-form object (a document's source) or not an object schema at all
        return named, open_ended, schemas


@cache
def _lenient_one_of() -> Any:
    """JSON Schema 2020-12 with ``oneOf`` read as ``anyOf``. The spec's unions overlap (``{"year": "asc"}`` is
    both a FieldWithDirection and an open SortOptions), so strict oneOf rejects bodies from the spec's own test
    stories (``tests/default/_core/search/search_after.yaml``). Unknown keys are caught by ``unknown_keys``."""
    from jsonschema import Draft202012Validator, validators

    any_of = Draft202012Validator.VALIDATORS["anyOf"]
    return validators.extend(Draft202012Validator, {"oneOf": any_of})


def _absolute_refs(schema: Any) -> Any:
    """An inline schema with its ``#/...`` references pointed at the spec, so it validates on its own."""
    if isinstance(schema, dict):
        return {k: SPEC_URN + v if k == "$ref" and v.startswith("#") else _absolute_refs(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_absolute_refs(v) for v in schema]
    return schema


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    return re.compile(f"^{pattern}$")


Handler = Callable[[Request], tuple[int, Any]]


@dataclass
class RecordedCluster:
    """Answers requests from registered handlers (first match wins), records them, and checks both directions."""

    validator: SpecValidator
    handlers: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def on(self, method: str, path_regex: str, handler: Handler | tuple[int, Any]) -> None:
        answer = handler if callable(handler) else (lambda _request, fixed=handler: fixed)
        self.handlers.insert(0, (method, re.compile(f"^{path_regex}$"), answer))

    def handle(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        parts = urlsplit(url)
        if body and headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        parsed: Any = None
        if body:
            text = body.decode()
            if "x-ndjson" in headers.get("content-type", "") or parts.path.endswith("/_bulk"):
                parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                parsed = json.loads(text)
        request = Request(method, parts.path, dict(parse_qsl(parts.query)), parsed, dict(headers))
        self.violations += self.validator.errors(request)
        self.requests.append(request)
        for handler_method, regex, handler in self.handlers:
            if handler_method == method and regex.match(parts.path):
                status, answer = handler(request)
                self.violations += self.validator.response_errors(request, status, answer)
                return status, answer
        raise AssertionError(f"no handler for {method} {parts.path}")

    def of(self, operation_prefix: str) -> list[Request]:
        return [r for r in self.requests if r.operation.startswith(operation_prefix)]


def recording_connection(cluster: RecordedCluster) -> type:
    """An opensearch-py connection class whose urllib3 pool is the recorded cluster instead of a socket."""
    from opensearchpy import Urllib3HttpConnection
    from urllib3 import HTTPResponse

    class Pool:
        def urlopen(self, method: str, url: str, body: bytes | None = None, headers: Any = None, **_: Any) -> Any:
            status, answer = cluster.handle(method, url, body, {k.lower(): v for k, v in (headers or {}).items()})
            data = b"" if answer is None else json.dumps(answer).encode()
            headers = {"content-type": "application/json"}
            return HTTPResponse(body=io.BytesIO(data), status=status, headers=headers, preload_content=True)

        def close(self) -> None:
            pass

    class RecordingConnection(Urllib3HttpConnection):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pool = Pool()

    return RecordingConnection

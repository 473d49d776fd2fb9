"""jsonschema validators for the schemas in cloud-hypervisor's OpenAPI document.

Used by the contract server (``fake_vmm``) and the tests. The document is OpenAPI 3.0,
whose schema dialect differs from JSON Schema: ``nullable: true`` becomes a ``null``
alternative, ``format: int64``/``uint8``… are dropped (not JSON Schema formats), and
``$ref`` resolves against the document itself. ``strict=True`` (the default) also adds
``additionalProperties: false`` to every object schema that lists properties and says
nothing about extra ones, so a misspelt field in a request body fails the test instead
of being silently ignored by the VMM.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = (
    Path(__file__).resolve().parents[4] / "shared" / "reference" / "cloud-hypervisor-openapi.yaml"
)
if not SPEC_PATH.exists():  # the checkout may live elsewhere; the reference is /work/shared
    SPEC_PATH = Path("/work/shared/reference/cloud-hypervisor-openapi.yaml")


@functools.cache
def spec() -> dict[str, Any]:
    """The parsed OpenAPI document."""
    with SPEC_PATH.open() as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def _translate(node: Any, strict: bool) -> Any:
    if isinstance(node, list):
        return [_translate(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _translate(v, strict) for k, v in node.items() if k not in {"format", "nullable"}}
    if node.get("nullable") is True:
        out = {"anyOf": [out, {"type": "null"}]}
    elif strict and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


@functools.cache
def _components(strict: bool) -> dict[str, Any]:
    schemas = copy.deepcopy(spec()["components"]["schemas"])
    return {"schemas": {name: _translate(s, strict) for name, s in schemas.items()}}


@functools.cache
def validator(schema_name: str, strict: bool = True) -> jsonschema.Draft7Validator:
    """A validator for ``#/components/schemas/<schema_name>``."""
    components = _components(strict)
    if schema_name not in components["schemas"]:
        raise KeyError(f"{schema_name} is not a schema in {SPEC_PATH}")
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    return jsonschema.Draft7Validator(root)


def errors(schema_name: str, value: Any, strict: bool = True) -> list[str]:
    """Every violation of ``schema_name`` by ``value`` as ``path: message`` lines."""
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator(schema_name, strict).iter_errors(value)
    ]


def request_schema(endpoint: str) -> str | None:
    """The component schema name of ``endpoint``'s request body, or None if it takes none."""
    for method in spec()["paths"].get(f"/{endpoint}", {}).values():
        content = method.get("requestBody", {}).get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref")
        if ref:
            return str(ref).rsplit("/", 1)[-1]
    return None


def response_schema(endpoint: str, status: int) -> str | None:
    """The component schema name of ``endpoint``'s answer with ``status``, or None."""
    for method in spec()["paths"].get(f"/{endpoint}", {}).values():
        responses = method.get("responses", {})
        answer = responses.get(status) or responses.get(str(status)) or {}
        ref = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        if ref:
            return str(ref).rsplit("/", 1)[-1]
    return None


def methods(endpoint: str) -> set[str]:
    """The HTTP methods the spec lists for ``endpoint`` (upper case)."""
    return {m.upper() for m in spec()["paths"].get(f"/{endpoint}", {})}


def endpoints() -> set[str]:
    """Every endpoint name in the spec, without the leading slash."""
    return {p.lstrip("/") for p in spec()["paths"]}

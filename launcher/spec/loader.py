"""Reading the mounted manifest file and dispatching on its apiVersion/kind.

Called through :func:`launcher.spec.load` (the CLI) and :func:`launcher.spec.parse`
(in-memory documents, e.g. hot-plug). Every failure — a missing, empty or unreadable
file, text that is neither YAML nor JSON, an unknown apiVersion/kind, or any field
problem — becomes one :class:`~launcher.errors.SpecError`; never another exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import Problem, SpecError
from launcher.spec.common import Draft, finalize
from launcher.spec.kubevirt import read_kubevirt_vm, read_kubevirt_vmi
from launcher.spec.model import VmSpec
from launcher.spec.reader import Fields, Problems, show
from launcher.spec.virtink import read_virtink

__all__ = ["MAX_SPEC_BYTES", "SHAPES", "load", "loads", "parse"]

log = logging.getLogger(__name__)

MAX_SPEC_BYTES = 4 << 20  # a VM manifest with inline cloud-init is a few KiB

SHAPES: dict[tuple[str, str], Callable[[Fields], Draft]] = {
    ("virt.virtink.smartx.com/v1alpha1", "VirtualMachine"): read_virtink,
    ("kubevirt.io/v1", "VirtualMachine"): read_kubevirt_vm,
    ("kubevirt.io/v1", "VirtualMachineInstance"): read_kubevirt_vmi,
    ("kubevirt.io/v1alpha3", "VirtualMachine"): read_kubevirt_vm,
    ("kubevirt.io/v1alpha3", "VirtualMachineInstance"): read_kubevirt_vmi,
}
_API_VERSIONS = sorted({api for api, _ in SHAPES})

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader (libyaml's when available) refusing duplicate mapping keys.

    PyYAML keeps the last of two equal keys; a manifest with ``interfaces:`` twice would
    silently lose the first list, so a duplicate is reported like a syntax error.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {show(key_node.value)}", key_node.start_mark
                    )
                seen.add(key_node.value)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {show(key)}")
        out[key] = value
    return out


def load(path: str | Path) -> VmSpec:
    """Read, parse and validate the manifest at ``path`` (YAML or JSON)."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError as err:
        raise SpecError([Problem(source, "the spec file does not exist")]) from err
    except IsADirectoryError as err:
        raise SpecError([Problem(source, "is a directory, not a spec file")]) from err
    except OSError as err:
        raise SpecError([Problem(source, f"cannot read the spec file: {err.strerror}")]) from err
    return loads(raw, source)


def loads(raw: bytes, source: str = "<spec>") -> VmSpec:
    """Parse and validate manifest bytes (YAML or JSON) read from ``source``: the same
    bounded, strict reading as :func:`load` (size, UTF-8, one document, no duplicate
    keys, no recursion blow-up); hot plug reads every changed spec file with it."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([Problem(source, f"the spec file is larger than {MAX_SPEC_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            [Problem(source, f"the spec file is not UTF-8 text (byte {err.start})")]
        ) from err
    document = _decode(text, source)
    spec = parse(document, source)
    log.debug("spec loaded", extra={"spec_path": source, "shape": spec.shape.value})
    return spec


def _decode(text: str, source: str) -> object:
    if not text.strip():
        raise SpecError([Problem(source, "the spec file is empty")])
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError) as err:
            if str(err).startswith("duplicate key"):
                raise SpecError([Problem(source, f"is not valid JSON: {err}")]) from err
            # YAML flow style also starts with a brace; let the YAML parser judge
    try:
        documents = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            [Problem(source, f"is not valid YAML or JSON: {err.problem}{where}")]
        ) from err
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        raise SpecError([Problem(source, f"is not valid YAML or JSON: {err}")]) from err
    if not documents:
        raise SpecError([Problem(source, "the spec file is empty")])
    if len(documents) > 1:
        raise SpecError(
            [Problem(source, f"holds {len(documents)} YAML documents; expected exactly one")]
        )
    return documents[0]


def parse(document: object, source: str = "<spec>") -> VmSpec:
    """Validate an already-decoded manifest; raises :class:`SpecError` listing every problem."""
    problems = Problems()
    doc = problems.fields(document, "")
    if doc is None:
        raise SpecError(
            [Problem(source, f"expected a mapping (a Kubernetes object), got {_kind(document)}")]
        )
    api = doc.string("apiVersion", required=True)
    kind = doc.string("kind", required=True)
    if problems:
        raise SpecError(problems.items)
    assert api is not None and kind is not None
    reader = SHAPES.get((api, kind))
    if reader is None:
        if api not in _API_VERSIONS:
            message = f"{show(api)} is not supported (expected one of {', '.join(_API_VERSIONS)})"
            raise SpecError([Problem("apiVersion", message)])
        kinds = sorted(k for a, k in SHAPES if a == api)
        raise SpecError(
            [
                Problem(
                    "kind",
                    f"{show(kind)} is not supported for {api} (expected {' or '.join(kinds)})",
                )
            ]
        )
    try:
        draft = reader(doc)
        problems.finish_all()
        spec = finalize(draft, problems)
    except RecursionError as err:
        raise SpecError([Problem(source, "the document is nested too deeply")]) from err
    if spec is None:
        raise SpecError(problems.items)
    return spec


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else type(value).__name__

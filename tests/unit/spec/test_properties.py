"""Property tests: any document yields a VmSpec or a SpecError, never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.errors import SpecError
from launcher.spec import VmSpec, parse

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))
VALID = [yaml.safe_load(p.read_text()) for p in EXAMPLES]

KEYS = st.sampled_from(
    [
        "apiVersion", "kind", "metadata", "name", "spec", "instance", "template", "domain",
        "devices", "interfaces", "networks", "volumes", "disks", "pod", "multus",
        "masquerade", "bridge", "sriov", "vdpa", "cidr", "ports", "port", "mac",
        "macAddress", "memory", "guest", "size", "cpu", "cores", "sockets", "x",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["1Gi", "kubevirt.io/v1", "VirtualMachine", "10.0.2.0/30", "pod"])
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(KEYS | st.text(max_size=6) | st.integers(0, 3), inner, max_size=5)
    ),
    max_leaves=30,
)


def outcome(document: object) -> VmSpec | SpecError:
    try:
        return parse(document)
    except SpecError as err:
        assert err.problems
        for problem in err.problems:
            assert isinstance(problem.path, str)
            assert problem.message and "\n" not in problem.message
        return err


@settings(max_examples=300, deadline=None)
@given(DOCS)
def test_arbitrary_documents(document: object) -> None:
    outcome(document)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["virt.virtink.smartx.com/v1alpha1", "kubevirt.io/v1"]),
    st.sampled_from(["VirtualMachine", "VirtualMachineInstance"]),
    DOCS,
)
def test_arbitrary_specs_under_known_kinds(api: str, kind: str, spec: object) -> None:
    outcome({"apiVersion": api, "kind": kind, "metadata": {"name": "p"}, "spec": spec})


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> object:
    """A valid example with one node replaced, deleted, or given an extra key."""
    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    paths = _paths(doc)[1:]
    path = draw(st.sampled_from(paths))
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(DOCS)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        parent[path[-1]][draw(KEYS)] = draw(DOCS)
    else:
        parent[path[-1]] = draw(DOCS)
    return doc


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_examples(document: object) -> None:
    outcome(document)


def test_examples_parse_unmutated() -> None:
    assert all(isinstance(outcome(doc), VmSpec) for doc in VALID)

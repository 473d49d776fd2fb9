"""load(): file-level failures are one clear SpecError line, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.spec import load
from launcher.spec.loader import MAX_SPEC_BYTES

DATA = Path(__file__).parent / "data"


def lines(path: Path | str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(path)
    return info.value.lines()


def test_missing_file(tmp_path: Path) -> None:
    assert lines(tmp_path / "nope.yaml") == [f"{tmp_path}/nope.yaml: the spec file does not exist"]


def test_directory(tmp_path: Path) -> None:
    assert lines(tmp_path) == [f"{tmp_path}: is a directory, not a spec file"]


def test_unreadable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads any mode; a FIFO-less stand-in: a file whose read fails with EACCES is
        # not possible as root, so check the OSError branch through a dangling symlink loop.
        loop = tmp_path / "loop"
        loop.symlink_to(loop)
        assert lines(loop) == [
            f"{loop}: cannot read the spec file: Too many levels of symbolic links"
        ]
    else:  # pragma: no cover - CI runs as root
        path = tmp_path / "secret.yaml"
        path.write_text("a: 1")
        path.chmod(0)
        assert lines(path) == [f"{path}: cannot read the spec file: Permission denied"]


def test_empty_and_comment_only() -> None:
    assert lines(DATA / "empty.yaml") == [f"{DATA}/empty.yaml: the spec file is empty"]


def test_blank(tmp_path: Path) -> None:
    path = tmp_path / "blank.yaml"
    path.write_text("  \n\n")
    assert lines(path) == [f"{path}: the spec file is empty"]


def test_not_yaml() -> None:
    assert lines(DATA / "not-yaml.yaml") == [
        f"{DATA}/not-yaml.yaml: is not valid YAML or JSON: did not find expected key at "
        "line 5, column 2"
    ]


def test_binary(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"apiVersion: \xff\xfe")
    assert lines(path) == [f"{path}: the spec file is not UTF-8 text (byte 12)"]


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("#" * (MAX_SPEC_BYTES + 1))
    assert lines(path) == [f"{path}: the spec file is larger than {MAX_SPEC_BYTES} bytes"]


def test_two_documents() -> None:
    assert lines(DATA / "two-documents.yaml") == [
        f"{DATA}/two-documents.yaml: holds 2 YAML documents; expected exactly one"
    ]


def test_top_level_list() -> None:
    assert lines(DATA / "list.json") == [
        f"{DATA}/list.json: expected a mapping (a Kubernetes object), got a list"
    ]


def test_unknown_api_version_and_kind() -> None:
    assert lines(DATA / "unknown-api.yaml") == [
        'apiVersion: "v1" is not supported (expected one of kubevirt.io/v1, '
        "kubevirt.io/v1alpha3, virt.virtink.smartx.com/v1alpha1)"
    ]
    assert lines(DATA / "unknown-kind.yaml") == [
        'kind: "Pod" is not supported for kubevirt.io/v1 (expected VirtualMachine or '
        "VirtualMachineInstance)"
    ]


def test_missing_api_version_and_kind(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("metadata: {name: x}\n")
    assert lines(path) == ["apiVersion: is required", "kind: is required"]


def test_many_problems_all_reported_in_document_order() -> None:
    assert lines(DATA / "many-problems.yaml") == [
        'spec.instance.cpu.sockets: expected an integer, got a string "two"',
        "spec.instance.memory.size: 8388608 bytes is less than the minimum of 16Mi",
        'spec.instance.interfaces[0].masquerade.cidr: "10.0.2.0/31" is too small: it needs '
        "at least 4 addresses",
        'spec.instance.interfaces[1].mac: "zz:11:22:33:44:55" is not a MAC address',
        'spec.colour: unknown field "colour"',
    ]


def test_json_document() -> None:
    assert lines(DATA / "masquerade-on-multus.json") == [
        'spec.domain.devices.interfaces[0].macAddress: "01:00:5e:00:00:01" is a multicast '
        "MAC address",
        "spec.domain.devices.interfaces[0].masquerade: masquerade needs the pod network, but "
        '"sec" is a multus network',
    ]


def test_json_and_yaml_give_the_same_spec(tmp_path: Path) -> None:
    import yaml

    doc = yaml.safe_load((Path(__file__).parents[3] / "examples/kubevirt-dpdk.yaml").read_text())
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(doc))
    assert load(path) == load(Path(__file__).parents[3] / "examples/kubevirt-dpdk.yaml")


def test_yaml_flow_style_starting_with_brace(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(
        "{apiVersion: kubevirt.io/v1, kind: VirtualMachineInstance, metadata: {name: f},\n"
        " spec: {domain: {memory: {guest: 64Mi}}}}\n"
    )
    spec = load(path)
    assert (spec.name, spec.memory_bytes) == ("f", 64 << 20)


def test_duplicate_yaml_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nkind: VirtualMachine\n"
    )
    assert lines(path) == [
        f'{path}: is not valid YAML or JSON: duplicate key "kind" at line 3, column 1'
    ]


def test_duplicate_json_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"kind": "VirtualMachine", "kind": "Pod"}')
    assert lines(path) == [f'{path}: is not valid JSON: duplicate key "kind"']


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: m}\n"
        "spec:\n  domain:\n    memory: &mem {guest: 1Gi}\n"
        "    resources:\n      requests:\n        <<: {memory: 2Gi}\n"
    )
    assert load(path).memory_bytes == 1 << 30

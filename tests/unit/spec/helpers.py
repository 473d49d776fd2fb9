"""Builders of small valid manifests (as dicts) the spec tests mutate."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from launcher.errors import SpecError
from launcher.spec import VmSpec, parse

Doc = dict[str, Any]


def virtink() -> Doc:
    """A valid Virtink VM: pod network in bridge mode, one container disk."""
    return copy.deepcopy(
        {
            "apiVersion": "virt.virtink.smartx.com/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "ns1"},
            "spec": {
                "instance": {
                    "cpu": {"sockets": 1, "coresPerSocket": 2},
                    "memory": {"size": "1Gi"},
                    "disks": [{"name": "root"}],
                    "interfaces": [{"name": "pod", "bridge": {}}],
                },
                "volumes": [{"name": "root", "containerDisk": {"image": "img"}}],
                "networks": [{"name": "pod", "pod": {}}],
            },
        }
    )


def kubevirt_vm() -> Doc:
    """A valid KubeVirt VM: masquerade on the pod network, one container disk."""
    return copy.deepcopy(
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "vm2"},
            "spec": {
                "running": True,
                "template": {
                    "metadata": {"labels": {"app": "x"}},
                    "spec": {
                        "domain": {
                            "devices": {
                                "interfaces": [{"name": "default", "masquerade": {}}],
                                "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                            },
                            "memory": {"guest": "512Mi"},
                        },
                        "networks": [{"name": "default", "pod": {}}],
                        "volumes": [{"name": "root", "containerDisk": {"image": "img"}}],
                    },
                },
            },
        }
    )


def kubevirt_vmi() -> Doc:
    """The same as :func:`kubevirt_vm` as a VirtualMachineInstance."""
    vm = kubevirt_vm()
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi3"},
        "spec": vm["spec"]["template"]["spec"],
    }


VM = "spec.template.spec"
DEV = f"{VM}.domain.devices"
INST = "spec.instance"


def vmi_of(doc: Doc) -> Doc:
    """The instance spec of a KubeVirt VM document (to mutate in place)."""
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def problems(doc: object) -> list[str]:
    """Every problem line parse() reports; fails the test if it accepts the document."""
    with pytest.raises(SpecError) as info:
        parse(doc)
    return info.value.lines()


def ok(doc: object) -> VmSpec:
    """parse(doc), failing the test with the problem lines if it refuses it."""
    try:
        return parse(doc)
    except SpecError as err:
        pytest.fail("\n".join(err.lines()))

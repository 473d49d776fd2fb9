"""testbed.podman.translate: a Pod becomes the podman run flags kubelet + CRI would amount to.

Pure (temp files only): the flags for each supported field, kubelet's file formats for
configMap and downwardAPI volumes, and the refusals — unknown fields, privilege beyond
least privilege, devices the node lacks, probes that cannot reach a loopback endpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from testbed.podman import DEVICE_RESOURCES, TranslateError, translate

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "vm1",
        "namespace": "ns",
        "labels": {"app": "x"},
        "annotations": {"b": 'say "hi"', "a": "1"},
    },
    "spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 45,
        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
        "containers": [
            {
                "name": "launcher",
                "image": "registry.example/vl:1",
                "args": ["run", "--log-level", "debug"],
                "env": [
                    {"name": "A", "value": "b"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "securityContext": {
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "runAsUser": 0,
                },
                "resources": {
                    "limits": {"devices.kubevirt.io/tun": "1", "memory": "1Gi", "cpu": "1500m"},
                    "requests": {"memory": "512Mi"},
                },
                "readinessProbe": {"exec": {"command": ["virt-launcher", "status"]}},
                "volumeMounts": [
                    {"name": "spec", "mountPath": "/etc/virt-launcher", "readOnly": True},
                    {"name": "info", "mountPath": "/etc/podinfo"},
                    {"name": "state", "mountPath": "/var/run/virt-launcher"},
                    {"name": "mem", "mountPath": "/m"},
                    {"name": "host", "mountPath": "/h", "readOnly": True, "subPath": "x"},
                ],
            }
        ],
        "volumes": [
            {"name": "spec", "configMap": {"name": "vm1-spec"}},
            {
                "name": "info",
                "downwardAPI": {
                    "items": [
                        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                        {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
                    ]
                },
            },
            {"name": "state", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "host", "hostPath": {"path": "/usr", "type": "Directory"}},
        ],
    },
}
CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "vm1-spec"},
    "data": {"vm.yaml": "kind: x\n"},
}


def test_every_supported_field_becomes_its_flag(tmp_path: Path) -> None:
    spec = translate([CONFIG_MAP, POD], tmp_path, image="localhost/vl:abc", network="net0")
    argv = list(spec.argv)
    assert argv[-4:] == ["localhost/vl:abc", "run", "--log-level", "debug"]
    flags = set(argv[:-4])
    assert {
        "--name=vm1",
        "--hostname=vm1",
        "--stop-timeout=45",
        "--pull=never",
        "--network=net0",
        "--sysctl=net.ipv4.ip_forward=1",
        "--cap-drop=ALL",
        "--cap-add=NET_ADMIN,NET_RAW",
        "--read-only",
        "--read-only-tmpfs=false",
        "--security-opt=no-new-privileges",
        "--user=0",
        "--device=/dev/net/tun",
        f"--memory={1 << 30}",
        "--cpus=1.5",
        "--env=A=b",
        "--env=POD=vm1",
        f"--mount=type=bind,source={tmp_path}/volumes/spec,destination=/etc/virt-launcher,ro",
        f"--mount=type=bind,source={tmp_path}/volumes/info,destination=/etc/podinfo,ro",
        f"--mount=type=bind,source={tmp_path}/volumes/state,destination=/var/run/virt-launcher",
        f"--mount=type=tmpfs,destination=/m,tmpfs-mode=1777,tmpfs-size={64 << 20}",
        "--mount=type=bind,source=/usr/x,destination=/h,ro",
        f"--mount=type=bind,source={tmp_path}/termination-log,destination=/dev/termination-log",
    } == flags, sorted(flags)
    assert spec.grace_s == 45
    assert spec.probes == {"readiness": ("virt-launcher", "status")}
    assert (tmp_path / "volumes/spec/vm.yaml").read_text() == "kind: x\n"
    # kubelet's downward-API format: sorted key="value" lines, values quoted
    assert (tmp_path / "volumes/info/annotations").read_text() == 'a="1"\nb="say \\"hi\\""'
    assert (tmp_path / "volumes/info/ns").read_text() == "ns"
    assert (tmp_path / "volumes/state").stat().st_mode & 0o777 == 0o777
    assert spec.termination_log == tmp_path / "termination-log"


def test_no_capabilities_named_gives_the_cri_default_set(tmp_path: Path) -> None:
    pod = copy.deepcopy(POD)
    del pod["spec"]["containers"][0]["securityContext"]["capabilities"]
    argv = translate([CONFIG_MAP, pod], tmp_path).argv
    caps = next(a for a in argv if a.startswith("--cap-add="))
    assert "NET_RAW" in caps and "MKNOD" in caps and "NET_ADMIN" not in caps


def _refused(tmp_path: Path, change: Any, match: str) -> None:
    pod = copy.deepcopy(POD)
    change(pod)
    with pytest.raises(TranslateError, match=match):
        translate([CONFIG_MAP, pod], tmp_path)


def _ctr(pod: dict[str, Any]) -> dict[str, Any]:
    ctr: dict[str, Any] = pod["spec"]["containers"][0]
    return ctr


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: _ctr(p)["securityContext"].update(privileged=True), "never runs privileged"),
        (
            lambda p: _ctr(p)["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"),
            "not least privilege",
        ),
        (lambda p: p["spec"].update(hostNetwork=True), "hostNetwork not supported"),
        (lambda p: _ctr(p).update(lifecycle={}), "lifecycle not supported"),
        (
            lambda p: _ctr(p)["resources"]["limits"].update({"devices.kubevirt.io/nope": "1"}),
            "resource 'devices.kubevirt.io/nope'",
        ),
        (
            lambda p: _ctr(p).update(readinessProbe={"httpGet": {"port": 8186}}),
            "only exec probes",
        ),
        (
            lambda p: p["spec"]["volumes"].append({"name": "d", "persistentVolumeClaim": {}}),
            "'persistentVolumeClaim' not supported",
        ),
        (
            lambda p: p["spec"]["securityContext"]["sysctls"].append(
                {"name": "kernel.shm_rmid_forced", "value": "1"}
            ),
            "not a net.\\* sysctl",
        ),
        (
            lambda p: p["metadata"]["annotations"].update({"k8s.v1.cni.cncf.io/networks": "a"}),
            "Multus",
        ),
        (
            lambda p: p["spec"]["volumes"][4]["hostPath"].update(path="/nonexistent"),
            "not a directory on this node",
        ),
        (lambda p: p["spec"]["volumes"][0]["configMap"].update(name="other"), "not given"),
    ],
)
def test_what_cannot_run_faithfully_is_refused(tmp_path: Path, change: Any, match: str) -> None:
    _refused(tmp_path, change, match)


def test_a_device_the_node_lacks_keeps_the_pod_pending(tmp_path: Path) -> None:
    pod = copy.deepcopy(POD)
    _ctr(pod)["resources"]["limits"]["devices.kubevirt.io/vhost-net"] = "1"
    devices = {**DEVICE_RESOURCES, "devices.kubevirt.io/vhost-net": (str(tmp_path / "none"),)}
    with pytest.raises(TranslateError, match="which this node does not have"):
        translate([CONFIG_MAP, pod], tmp_path, devices=devices)


def test_command_becomes_the_entrypoint(tmp_path: Path) -> None:
    pod = copy.deepcopy(POD)
    _ctr(pod)["command"] = ["/bin/sh", "-c"]
    argv = translate([CONFIG_MAP, pod], tmp_path).argv
    entry = next(a for a in argv if a.startswith("--entrypoint="))
    assert json.loads(entry.split("=", 1)[1]) == ["/bin/sh", "-c"]


def test_init_containers_fs_group_and_image_volumes(tmp_path: Path) -> None:
    """What virt-launcher manifest emits for kernel images: init containers copying out of
    an image (or an image volume), fsGroup-owned volumes."""
    pod = copy.deepcopy(POD)
    pod["spec"]["securityContext"].update(fsGroup=107, fsGroupChangePolicy="OnRootMismatch")
    pod["spec"]["volumes"].append({"name": "kernel", "image": {"reference": "reg/kernel:1"}})
    _ctr(pod)["volumeMounts"].append({"name": "kernel", "mountPath": "/k", "readOnly": True})
    pod["spec"]["initContainers"] = [
        {
            "name": "copy",
            "image": "reg/kernel:1",
            "command": ["/tools/busybox", "cp", "/vmlinuz", "/state/"],
            "securityContext": {"capabilities": {"drop": ["ALL"]}, "runAsUser": 107},
            "volumeMounts": [{"name": "state", "mountPath": "/state"}],
        }
    ]
    images = {"reg/kernel:1": "localhost/kernel:abc"}
    spec = translate(
        [CONFIG_MAP, pod], tmp_path, image="localhost/vl:1", images=images, network="n"
    )
    assert "--mount=type=image,source=localhost/kernel:abc,destination=/k" in spec.argv
    assert "--group-add=107" in spec.argv
    (init,) = spec.init
    assert init[:4] == ("--name=vm1-init-0", "--rm", "--pull=never", "--network=none")
    assert "--cap-drop=ALL" in init and not any(a.startswith("--cap-add") for a in init)
    assert "--user=107" in init and "--group-add=107" in init
    assert f"--mount=type=bind,source={tmp_path}/volumes/state,destination=/state" in init
    command = pod["spec"]["initContainers"][0]["command"]
    assert init[-2:] == ("--entrypoint=" + json.dumps(command), "localhost/kernel:abc")
    state = tmp_path / "volumes/state"
    assert state.stat().st_gid == 107 and state.stat().st_mode & 0o2000
    assert (tmp_path / "volumes/spec/vm.yaml").stat().st_gid == 107


def test_a_memory_emptydir_shared_with_an_init_container_is_refused(tmp_path: Path) -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["initContainers"] = [
        {"name": "i", "image": "x", "volumeMounts": [{"name": "mem", "mountPath": "/m"}]}
    ]
    with pytest.raises(TranslateError, match="Memory emptyDir shared with an init container"):
        translate([CONFIG_MAP, pod], tmp_path)

"""The built image runs VMs under podman (runc) on a real CNI network, with least privilege.

Each VM test writes the Kubernetes objects ``virt-launcher manifest`` is to print (a
ConfigMap with the spec and a Pod: capabilities drop ALL + NET_ADMIN, NET_RAW,
NET_BIND_SERVICE, pod sysctls, /dev/kvm and /dev/net/tun as device-plugin resources, a
read-only root file system, the state dir on an emptyDir, the guest kernel and initrd
read-only from the node), ``testbed.podman.translate`` turns them into ``podman run``
flags as kubelet + a CRI runtime would run them, and the container runs on a dual-stack
podman network (CNI bridge + host-local IPAM) in a node netns (tests/container/conftest.py).
The guest prints its addresses on its serial console, which the launcher writes to its
stdout (``serial: VL-…`` lines, docs/guest.md); the node reaches it at the pod IP.

Checked: the image is built and a second build is a cache hit; it has the qemu user
(107) and no pip; ``validate`` runs in the container; a bridge VM gets the pod's IPv4
and IPv6 and serves HTTP at the pod IP, no process holds a capability beyond the three,
and ``podman stop`` presses the power button → exit 0 + termination log; a masquerade
VM is reached through a listed port at the pod IP and not through an unlisted one;
without NET_ADMIN the launcher exits 3 naming it; a Virtink spec (cloud-hypervisor by
default, not in the image) exits 4 naming the binary and ``--hypervisor qemu``.

``vm_objects`` stands in for ``virt-launcher manifest`` until that command exists.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed.guest.build import GuestImage
from testbed.podman import Container, Network, Node, PodStarter, ensure_image

pytestmark = pytest.mark.timeout(240)

NAMESPACE = "vms"
GRACE_S = 20  # the spec's; the Pod gets GRACE_S + GRACE_MARGIN_S
GRACE_MARGIN_S = 10
BOOT_TIMEOUT_S = 90.0  # container start → guest lease under TCG; normally about 10 s
EXIT_TIMEOUT_S = 60.0
LAUNCHER_CAPS = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")
CAP_BITS = {"SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13,
            "SYS_RESOURCE": 24}  # fmt: skip
STATE_DIR = "/var/run/virt-launcher"
KERNEL_DIR = f"{STATE_DIR}/volumes/kernel"  # docs/volumes.md: <volumes-dir>/kernel/<path>
#: Pod sysctls the network plan needs that only a sysctl can set (per-interface IPv4
#: forwarding, arp_ignore and route_localnet go through netlink, IPv6 DAD is avoided per
#: address: issue 14 part 1). accept_ra=2 only when the pod has RA routes (not here).
SYSCTLS = {
    "bridge": {"net.ipv6.conf.all.forwarding": "1"},
    "masquerade": {"net.ipv6.conf.all.forwarding": "1"},
}


def kubevirt_spec(name: str, binding: str) -> str:
    """A KubeVirt VMI booting the test guest by direct kernel boot with one pod NIC."""
    iface = (
        "bridge: {}"
        if binding == "bridge"
        else "masquerade: {}\n          ports:\n            - port: 80"
    )
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  hostname: {name}
  terminationGracePeriodSeconds: {GRACE_S}
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    firmware:
      kernelBoot:
        container:
          image: registry.example/vl-test-guest:1
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1"
    devices:
      interfaces:
        - name: pod
          {iface}
  networks:
    - name: pod
      pod: {{}}
"""


def virtink_spec(name: str) -> str:
    """A Virtink VM (cloud-hypervisor by default) booting the test guest's kernel."""
    return f"""\
apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  instance:
    memory:
      size: 256Mi
    kernel:
      image: registry.example/vl-test-kernel:1
      cmdline: "console=ttyS0 quiet"
    interfaces:
      - name: pod
        bridge: {{}}
  networks:
    - name: pod
      pod: {{}}
"""


def vm_objects(
    name: str,
    spec_text: str,
    guest: GuestImage,
    *,
    binding: str = "bridge",
    capabilities: Sequence[str] = LAUNCHER_CAPS,
    kernel_files: dict[str, Path] | None = None,
    args: Sequence[str] = ("run",),
) -> list[dict[str, Any]]:
    """The ConfigMap + Pod ``virt-launcher manifest`` should print for this VM.

    ``kernel_files`` maps file names under the kernel volume to node files (hostPath
    ``File``); by default the guest's directory is the kernel volume (``vmlinuz``,
    ``initrd.gz``), as a kernel container image would be mounted."""
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": f"{name}-spec"}},
        {
            "name": "podinfo",
            "downwardAPI": {
                "items": [
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                ]
            },
        },
        {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": "/etc/virt-launcher", "readOnly": True},
        {"name": "podinfo", "mountPath": "/etc/podinfo", "readOnly": True},
        {"name": "state", "mountPath": STATE_DIR},
    ]
    if kernel_files is None:
        volumes.append(
            {"name": "kernel", "hostPath": {"path": str(guest.directory), "type": "Directory"}}
        )
        mounts.append({"name": "kernel", "mountPath": KERNEL_DIR, "readOnly": True})
    else:
        for i, (file_name, node_file) in enumerate(sorted(kernel_files.items())):
            volumes.append(
                {"name": f"kernel-{i}", "hostPath": {"path": str(node_file), "type": "File"}}
            )
            mounts.append(
                {"name": f"kernel-{i}", "mountPath": f"{KERNEL_DIR}/{file_name}", "readOnly": True}
            )
    devices = {"devices.kubevirt.io/kvm": "1", "devices.kubevirt.io/tun": "1"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "virt-launcher", "vm": name},
            "annotations": {"virt-launcher.io/spec-configmap": f"{name}-spec"},
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": GRACE_S + GRACE_MARGIN_S,
            "securityContext": {
                "sysctls": [{"name": k, "value": v} for k, v in SYSCTLS[binding].items()]
            },
            "containers": [
                {
                    "name": "launcher",
                    "image": "registry.example/virt-launcher:test",
                    "args": list(args),
                    "securityContext": {
                        "capabilities": {"drop": ["ALL"], "add": list(capabilities)},
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "runAsUser": 0,
                    },
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "512Mi", **devices},
                        "limits": devices,
                    },
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec", "namespace": NAMESPACE},
        "data": {"vm.yaml": spec_text},
    }
    return [config_map, pod]


def node_http(the_node: Node, url: str, attempts: int = 15) -> str:
    """GET ``url`` from the node netns (bounded retries); the body, or '' if never answered."""
    for _ in range(attempts):
        done = the_node.exec_in_node("curl", "-sS", "-g", "--max-time", "2", url)
        if done.returncode == 0:
            return done.stdout
        time.sleep(1)
    return ""


def pod_capabilities(container: Container) -> list[str]:
    """The capabilities the translated Pod gives its container (from its --cap-add)."""
    adds = [a.removeprefix("--cap-add=") for a in container.spec.argv if a.startswith("--cap-add=")]
    return [c for add in adds for c in add.split(",")]


def error_records(container: Container) -> list[dict[str, Any]]:
    return [r for r in container.records() if r.get("level") == "error"]


def test_image_builds_is_cached_and_has_the_vmm_user(
    image: str, cluster: tuple[Node, Network]
) -> None:
    the_node, _ = cluster
    started = time.monotonic()
    assert ensure_image() == image  # nothing changed: the same tag, nothing rebuilt
    assert time.monotonic() - started < 60
    info = the_node.podman("image", "inspect", "--format", "{{.Size}}", image).stdout
    assert 100 << 20 < int(info) < 600 << 20, f"image size {int(info) >> 20} MiB"
    probe = the_node.podman(
        "run", "--rm", "--network=none", "--read-only", "--read-only-tmpfs=false",
        "--cap-drop=ALL", "--entrypoint=sh", image, "-c",
        "id qemu; test ! -e /opt/virt-launcher/bin/pip && echo no-pip; "
        "for t in qemu-system-x86_64 nft ip; do command -v $t; done; "
        "/bin/busybox --list | grep -qx cp && echo busybox; "
        "test ! -e /usr/bin/cloud-hypervisor && echo no-ch",
    )  # fmt: skip
    assert probe.stdout.splitlines() == [
        "uid=107(qemu) gid=107(qemu) groups=107(qemu)",
        "no-pip",
        "/usr/bin/qemu-system-x86_64",
        "/usr/sbin/nft",
        "/usr/sbin/ip",
        "busybox",
        "no-ch",
    ], probe.stdout + probe.stderr


def test_validate_runs_in_the_container(pods: PodStarter, guest: GuestImage) -> None:
    spec = (Path(__file__).parents[2] / "examples/kubevirt-masquerade-ports.yaml").read_text()
    container = pods(vm_objects("validate", spec, guest, args=["validate"]))
    assert container.wait(EXIT_TIMEOUT_S) == 0, container.stderr_path.read_text()[-2000:]
    assert "ok" in container.console.text().lower(), container.console.text()


def test_bridge_vm_gets_the_pod_ips_and_stops_cleanly(
    pods: PodStarter, guest: GuestImage, cluster: tuple[Node, Network]
) -> None:
    the_node, network = cluster
    container = pods(vm_objects("bridge", kubevirt_spec("bridge", "bridge"), guest))
    pod4, pod6 = container.addresses(network)
    lease4 = container.wait_for("LEASE4", BOOT_TIMEOUT_S)
    lease6 = container.wait_for("LEASE6", BOOT_TIMEOUT_S)
    prefix4 = network.subnet4.split("/")[1]
    assert lease4.args == ("eth0", f"{pod4}/{prefix4}")
    assert lease4.fields["router"] == network.gateway4
    assert lease6.args == ("eth0", f"{pod6}/128")
    assert "VL-HTTP-OK port=80 hostname=bridge" in node_http(the_node, f"http://{pod4}/")
    assert "VL-HTTP-OK port=80 hostname=bridge" in node_http(the_node, f"http://[{pod6}]/")
    # Least privilege: nothing in the pod holds a capability the Pod did not add.
    allowed = sum(1 << CAP_BITS[c] for c in pod_capabilities(container))
    for proc in container.processes():
        assert proc.cap_eff & ~allowed == 0, proc
        assert proc.cap_prm & ~allowed == 0, proc
    # podman stop = kubelet's kill: SIGTERM, SIGKILL after terminationGracePeriodSeconds.
    mark = container.console.mark()
    sent = time.monotonic()
    stopper = subprocess.Popen(the_node.argv("stop", container.name), stdout=subprocess.DEVNULL)
    try:
        container.wait_for("POWER-BUTTON", GRACE_S, since=mark)
        container.wait_for("POWEROFF", GRACE_S, since=mark)
        code = container.wait(GRACE_S + GRACE_MARGIN_S)
    finally:
        stopper.wait(GRACE_S + GRACE_MARGIN_S + 30)
    took = time.monotonic() - sent
    assert code == 0, container.stderr_path.read_text()[-3000:]
    assert took < GRACE_S, f"stop took {took:.1f} s, not within the {GRACE_S} s grace period"
    assert container.spec.termination_log is not None
    assert "guest powered off after SIGTERM" in container.spec.termination_log.read_text()


def test_masquerade_vm_is_reached_through_a_listed_port_only(
    pods: PodStarter, guest: GuestImage, cluster: tuple[Node, Network]
) -> None:
    the_node, network = cluster
    container = pods(
        vm_objects("masq", kubevirt_spec("masq", "masquerade"), guest, binding="masquerade")
    )
    pod4, pod6 = container.addresses(network)
    lease4 = container.wait_for("LEASE4", BOOT_TIMEOUT_S)
    assert lease4.args[0] == "eth0" and lease4.args[1].startswith("10.0.2.2/")
    container.wait_for("READY", BOOT_TIMEOUT_S)
    assert "VL-HTTP-OK port=80 hostname=masq" in node_http(the_node, f"http://{pod4}:80/")
    container.wait_for("LEASE6", BOOT_TIMEOUT_S)
    assert "VL-HTTP-OK port=80 hostname=masq" in node_http(the_node, f"http://[{pod6}]:80/")
    # The guest serves 8080 too (docs/guest.md), but only 80 is listed: no DNAT.
    refused = the_node.exec_in_node("curl", "-sS", "--max-time", "3", f"http://{pod4}:8080/")
    assert refused.returncode != 0 and "VL-HTTP-OK" not in refused.stdout, refused.stdout


def test_without_net_admin_the_launcher_exits_3_naming_it(
    pods: PodStarter, guest: GuestImage
) -> None:
    objects = vm_objects(
        "nocap",
        kubevirt_spec("nocap", "bridge"),
        guest,
        capabilities=("NET_RAW", "NET_BIND_SERVICE"),
    )
    container = pods(objects)
    code = container.wait(EXIT_TIMEOUT_S)
    log = container.stderr_path.read_text()[-3000:]
    assert code == 3, log
    errors = error_records(container)
    assert len(errors) == 1, log
    assert "NET_ADMIN" in str(errors[0]["msg"]), log
    assert container.spec.termination_log is not None
    assert "NET_ADMIN" in container.spec.termination_log.read_text()


def test_virtink_spec_without_cloud_hypervisor_exits_4_naming_it(
    pods: PodStarter, guest: GuestImage
) -> None:
    objects = vm_objects(
        "virtink", virtink_spec("virtink"), guest, kernel_files={"vmlinux": guest.kernel}
    )
    container = pods(objects)
    code = container.wait(EXIT_TIMEOUT_S)
    log = container.stderr_path.read_text()[-3000:]
    assert code == 4, log
    errors = error_records(container)
    assert len(errors) == 1, log
    message = str(errors[0]["msg"])
    assert "cloud-hypervisor binary 'cloud-hypervisor'" in message, message
    assert "--hypervisor qemu" in message, message
    assert container.spec.termination_log is not None
    assert container.spec.termination_log.read_text().strip() == message

"""The Pods ``virt-launcher manifest`` prints run VMs under podman (runc) on a real CNI network.

The manifest is the contract a cluster admin approves, so these tests run exactly that
Pod. Each VM test writes a spec, runs the real ``virt-launcher manifest`` on it (the
``manifest`` fixture, tests/container/conftest.py), and ``testbed.podman.translate``
turns the printed ConfigMap + Pod into ``podman run`` flags as kubelet + a CRI runtime
would run them: the init containers that copy the kernel out of its image into an
emptyDir, capabilities dropped to ALL + the plan's, the pod sysctls, /dev/kvm and
/dev/net/tun as device-plugin resources, a read-only root file system, the spec and
downward-API volumes, the exec probes. Nothing is privileged, and ``/proc/sys`` is
read-only as podman (like containerd and CRI-O) mounts it for every such container
(checked). The container runs on a dual-stack podman network (CNI bridge + host-local
IPAM) in a node netns; the guest prints its addresses on its serial console, which the
launcher writes to its stdout (``serial: VL-…`` lines, docs/guest.md), and the node
reaches it at the pod IP.

The negative tests change the printed Pod in one named place each (a capability or the
sysctls taken out, ``args`` replaced by ``validate``) and nothing else.

Checked: the image is built and a second build is a cache hit; it has the qemu user
(107) and no pip; ``validate`` runs in the container; a bridge VM gets the pod's IPv4
and IPv6 and serves HTTP at both pod IPs, the Pod's own readiness probe passes, no
process holds a capability the Pod did not add, ``/proc/sys``, ``/sys`` and ``/`` are
read-only, and ``podman stop`` presses the power button → exit 0 + termination log; a
masquerade VM (with a writable emptyDisk: its Pod adds CHOWN, the bridge VM's has none) is
reached through a listed port at the pod IP and not through an unlisted one; without any
one of NET_ADMIN, NET_RAW, NET_BIND_SERVICE (or CHOWN for the VM with the emptyDisk), or
without the pod sysctl, the launcher exits 3 naming it before the pod network is touched;
a Virtink spec (cloud-hypervisor by default, not in the image) exits 4 naming the binary
and ``--hypervisor qemu``, also before.
"""

from __future__ import annotations

import copy
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.podman import Container, Network, Node, PodStarter, ensure_image

from .conftest import GUEST_IMAGE, Manifest

pytestmark = pytest.mark.timeout(240)

NAMESPACE = "vms"
GRACE_S = 20  # the spec's; the manifest gives the Pod this + its margin
BOOT_TIMEOUT_S = 90.0  # container start → guest lease under TCG; normally about 10 s
READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 60.0
CAP_BITS = {"CHOWN": 0, "KILL": 5, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10,
            "NET_ADMIN": 12, "NET_RAW": 13, "SYS_RESOURCE": 24}  # fmt: skip
IPV6_FORWARDING = "net.ipv6.conf.all.forwarding"


def kubevirt_spec(name: str, binding: str, *, disk: bool = False) -> str:
    """A KubeVirt VMI booting the test guest from a kernel-boot image with one pod NIC (and
    with ``disk``, a writable emptyDisk ``scratch``: the manifest then adds CHOWN)."""
    iface = (
        "bridge: {}"
        if binding == "bridge"
        else "masquerade: {}\n          ports:\n            - port: 80"
    )
    disks = "\n      disks:\n        - name: scratch\n          disk: {}" if disk else ""
    volumes = (
        "\n  volumes:\n    - name: scratch\n      emptyDisk:\n        capacity: 16Mi"
        if disk
        else ""
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
          image: {GUEST_IMAGE}
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1"
    devices:
      interfaces:
        - name: pod
          {iface}{disks}
  networks:
    - name: pod
      pod: {{}}{volumes}
"""


def virtink_spec(name: str) -> str:
    """A Virtink VM (cloud-hypervisor by default) booting the test guest's kernel image."""
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
      image: {GUEST_IMAGE}
      cmdline: "console=ttyS0 quiet"
    interfaces:
      - name: pod
        bridge: {{}}
  networks:
    - name: pod
      pod: {{}}
"""


def pod_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = [o for o in objects if o["kind"] == "Pod"]
    return pod


def launcher_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_of(objects)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["launcher"]
    return containers[0]


def added_capabilities(objects: list[dict[str, Any]]) -> list[str]:
    caps = launcher_of(objects)["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return list(caps["add"])


def node_http(the_node: Node, url: str, attempts: int = 15) -> str:
    """GET ``url`` from the node netns (bounded retries); the body, or '' if never answered."""
    for _ in range(attempts):
        done = the_node.exec_in_node("curl", "-sS", "-g", "--max-time", "2", url)
        if done.returncode == 0:
            return done.stdout
        time.sleep(1)
    return ""


def mount_options(container: Container, mount_point: str) -> set[str]:
    """The per-mount options of ``mount_point`` as the container's first process sees it
    (of the last mount there: the one on top)."""
    pid = int(container.inspect()["State"]["Pid"])
    found: set[str] = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            found = set(fields[5].split(","))
    assert found, f"nothing is mounted at {mount_point} in {container.name}"
    return found


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


def test_validate_runs_in_the_container(pods: PodStarter, manifest: Manifest) -> None:
    objects = manifest(kubevirt_spec("validate", "masquerade"))
    launcher_of(objects)["args"] = ["validate", "--spec", "/etc/virt-launcher/vm.yaml"]
    container = pods(objects)
    assert container.wait(EXIT_TIMEOUT_S) == 0, container.stderr_path.read_text()[-2000:]
    assert "ok: kubevirt-vmi vms/validate" in container.console.text(), container.console.text()


def test_bridge_vm_gets_the_pod_ips_and_stops_cleanly(
    pods: PodStarter, manifest: Manifest, cluster: tuple[Node, Network]
) -> None:
    the_node, network = cluster
    objects = manifest(kubevirt_spec("bridge", "bridge"))
    assert "CHOWN" not in added_capabilities(objects)  # no disk to give the VMM user
    pod = pod_of(objects)
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > GRACE_S
    container = pods(objects)
    # What podman gives an unprivileged container, as every CRI runtime does.
    for read_only in ("/proc/sys", "/sys", "/"):
        assert "ro" in mount_options(container, read_only), read_only
    pod4, pod6 = container.addresses(network)
    lease4 = container.wait_for("LEASE4", BOOT_TIMEOUT_S)
    lease6 = container.wait_for("LEASE6", BOOT_TIMEOUT_S)
    prefix4 = network.subnet4.split("/")[1]
    assert lease4.args == ("eth0", f"{pod4}/{prefix4}")
    assert lease4.fields["router"] == network.gateway4
    assert lease6.args == ("eth0", f"{pod6}/128")
    assert "VL-HTTP-OK port=80 hostname=bridge" in node_http(the_node, f"http://{pod4}/")
    assert "VL-HTTP-OK port=80 hostname=bridge" in node_http(the_node, f"http://[{pod6}]/")
    # The Pod's own exec probes, run as kubelet runs them.
    live = container.probe("startup")
    assert (live.returncode, live.stdout.strip()) == (0, "live: ok"), live.stderr
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (ready := container.probe("readiness")).returncode != 0:
        assert time.monotonic() < deadline, ready.stdout + ready.stderr
        time.sleep(1)
    assert ready.stdout.strip() == "ready: ok"
    # Least privilege: nothing in the pod holds a capability the Pod did not add.
    allowed = sum(1 << CAP_BITS[c] for c in added_capabilities(objects))
    procs = container.processes()
    for proc in procs:
        assert proc.cap_eff & ~allowed == 0, proc
        assert proc.cap_prm & ~allowed == 0, proc
    # Privilege separation (docs/privileges.md): the VMM is uid 107 with nothing; of ours,
    # only the helper still holds capabilities, and only the NET ones and KILL.
    vmms = [p for p in procs if p.name.startswith("qemu-system")]
    assert vmms and all(p.uid == 107 and p.cap_eff == p.cap_prm == 0 for p in vmms), procs
    holding = [p for p in procs if p.cap_eff or p.cap_prm]
    helper_caps = sum(
        1 << CAP_BITS[c] for c in ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "KILL")
    )
    assert len(holding) == 1 and holding[0].cap_prm & ~helper_caps == 0, procs
    # podman stop = kubelet's kill: SIGTERM, SIGKILL after terminationGracePeriodSeconds.
    mark = container.console.mark()
    sent = time.monotonic()
    stopper = subprocess.Popen(the_node.argv("stop", container.name), stdout=subprocess.DEVNULL)
    try:
        container.wait_for("POWER-BUTTON", GRACE_S, since=mark)
        container.wait_for("POWEROFF", GRACE_S, since=mark)
        code = container.wait(grace)
    finally:
        stopper.wait(grace + 30)
    took = time.monotonic() - sent
    assert code == 0, container.stderr_path.read_text()[-3000:]
    assert took < GRACE_S, f"stop took {took:.1f} s, not within the {GRACE_S} s grace period"
    assert container.spec.termination_log is not None
    assert "guest powered off after SIGTERM" in container.spec.termination_log.read_text()


def test_masquerade_vm_is_reached_through_a_listed_port_only(
    pods: PodStarter, manifest: Manifest, cluster: tuple[Node, Network]
) -> None:
    the_node, network = cluster
    objects = manifest(kubevirt_spec("masq", "masquerade", disk=True))
    assert "CHOWN" in added_capabilities(objects)  # the emptyDisk becomes uid 107's
    container = pods(objects)
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


@pytest.mark.parametrize("capability", ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "CHOWN"])
def test_without_a_start_up_capability_the_launcher_exits_3_naming_it(
    pods: PodStarter, manifest: Manifest, capability: str
) -> None:
    """The network capabilities, and CHOWN for a VM with a writable disk (emptyDisk)."""
    name = f"no-{capability.lower().replace('_', '-')}"
    disk = capability == "CHOWN"
    objects = manifest(kubevirt_spec(name, "bridge", disk=disk))
    caps = launcher_of(objects)["securityContext"]["capabilities"]
    assert capability in caps["add"]
    caps["add"] = [c for c in caps["add"] if c != capability]
    container = pods(objects)
    code = container.wait(EXIT_TIMEOUT_S)
    log = container.stderr_path.read_text()[-3000:]
    assert code == 3, log
    errors = error_records(container)
    assert len(errors) == 1, log
    message = str(errors[0]["msg"])
    assert message.startswith(f"missing capability {capability} "), message
    assert "securityContext.capabilities.add" in message, message
    assert not disk or "disk 'scratch' (emptyDisk)" in message, message
    assert container.spec.termination_log is not None
    assert capability in container.spec.termination_log.read_text()
    # Found missing before the pod network was touched.
    assert not [r for r in container.records() if r.get("event") == "network-applied"], log


def test_without_the_pod_sysctl_the_launcher_exits_3_naming_it(
    pods: PodStarter, manifest: Manifest
) -> None:
    objects = manifest(kubevirt_spec("nosysctl", "bridge"))
    security = pod_of(objects)["spec"]["securityContext"]
    assert {"name": IPV6_FORWARDING, "value": "1"} in security["sysctls"]
    before = copy.deepcopy(security)
    del security["sysctls"]
    assert before != security
    container = pods(objects)
    code = container.wait(EXIT_TIMEOUT_S)
    log = container.stderr_path.read_text()[-3000:]
    assert code == 3, log
    errors = error_records(container)
    assert len(errors) == 1, log
    message = str(errors[0]["msg"])
    assert IPV6_FORWARDING in message, message
    assert "spec.securityContext.sysctls" in message, message
    assert container.spec.termination_log is not None
    assert IPV6_FORWARDING in container.spec.termination_log.read_text()
    assert not [r for r in container.records() if r.get("event") == "network-applied"], log


def test_virtink_spec_without_cloud_hypervisor_exits_4_naming_it(
    pods: PodStarter, manifest: Manifest
) -> None:
    container = pods(manifest(virtink_spec("virtink")))
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
    # Found missing before the pod network was touched.
    assert not [r for r in container.records() if r.get("event") == "network-applied"], log

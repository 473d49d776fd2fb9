"""E2E: live NIC hot plug and unplug under ``python -m launcher run`` with the real test guest.

QEMU/TCG boots the test guest (docs/guest.md) in a simulated pod ``hp-pod-<pid>`` whose
``eth0`` is a veth to ``hp-peer-<pid>`` (10.95.0.5/24). The spec and the downward-API
annotations are projected the way kubelet does it (``..data`` symlink swaps). While
the first NIC keeps serving HTTP to its peer:

1. a spec change that fails validation is refused and logged; nothing changes;
2. a second veth appears in the pod (as Multus dynamic networks would add it), with its
   network-status entry, then the spec gains the interface: the guest sees a new NIC
   (VL-NIC-ADDED), leases 10.96.0.5/24 over DHCP and serves HTTP to ``hp-l2-<pid>``;
   — all of it done by a launcher without capabilities, through its privileged helper,
   for a QEMU running as uid 107;
3. the interface is marked ``state: absent``: the guest's NIC disappears
   (VL-NIC-REMOVED), the launcher's tap, bridge and nft rules for it are gone and the
   pod interface has its address back.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from launcher.network.multus import kubevirt_hashed_name
from testbed.guest.build import GuestImage
from testbed.guest.console import ConsoleReader
from testbed.harness import sh, simulated_pod, veth
from tests.component.hotplug.atomic import atomic_write

REPO = Path(__file__).resolve().parents[2]
SUFFIX = os.getpid() % 100000
POD, PEER, L2 = f"hp-pod-{SUFFIX}", f"hp-peer-{SUFFIX}", f"hp-l2-{SUFFIX}"
SEC_IF = kubevirt_hashed_name("sec")
BOOT_TIMEOUT_S = 75.0
STATUS_PORT = 19000 + SUFFIX % 1000
PLUG_TIMEOUT_S = 45.0
EXIT_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(300)

BASE: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "hp-vm", "namespace": "e2e"},
    "spec": {
        "terminationGracePeriodSeconds": 15,
        "domain": {
            "cpu": {"cores": 1},
            "memory": {"guest": "256Mi"},
            "firmware": {
                "kernelBoot": {
                    "container": {
                        "image": "localhost/hp-guest:latest",
                        "kernelPath": "/vmlinuz",
                        "initrdPath": "/initrd.gz",
                    },
                    "kernelArgs": "console=ttyS0 quiet loglevel=1 panic=-1 vl.ready_timeout=8",
                }
            },
            "devices": {"interfaces": [{"name": "pod", "bridge": {}}]},
        },
        "networks": [{"name": "pod", "pod": {}}],
    },
}

POD_STATUS = {"name": "kindnet", "interface": "eth0", "ips": ["10.95.0.5"], "default": True}
SEC_STATUS = {"name": "e2e/sec-net", "interface": SEC_IF, "ips": ["10.96.0.5"]}


def spec(sec: str | None = None) -> bytes:
    doc = copy.deepcopy(BASE)
    if sec is not None:
        iface: dict[str, Any] = {"name": "sec", "bridge": {}}
        if sec == "absent":
            iface["state"] = "absent"
        doc["spec"]["domain"]["devices"]["interfaces"].append(iface)
        doc["spec"]["networks"].append({"name": "sec", "multus": {"networkName": "sec-net"}})
    return yaml.safe_dump(doc).encode()


def podinfo_file(*entries: dict[str, Any]) -> bytes:
    value = json.dumps(list(entries))
    lines = f"k8s.v1.cni.cncf.io/network-status={json.dumps(value)}\n"
    return (lines + 'kubernetes.io/config.source="api"\n').encode()


@pytest.fixture
def pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, "hpp0", ("10.95.0.5", "10.95.0.1"), others=(L2,)):
        yield


def http_from(ns: str, address: str, attempts: int = 15) -> str:
    for _ in range(attempts):
        done = sh("ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "2",
                  f"http://{address}/", check=False, timeout=10)  # fmt: skip
        if done.returncode == 0:
            return done.stdout
        time.sleep(1)
    return ""


def status_document() -> dict[str, Any]:
    """``GET /status`` from inside the pod (the endpoint listens on the pod's loopback)."""
    for _ in range(20):  # snapshots are refreshed in the background: wait for the new NIC
        done = sh("ip", "netns", "exec", POD, "curl", "-sS", "--max-time", "2",
                  f"http://127.0.0.1:{STATUS_PORT}/status", check=False)  # fmt: skip
        if done.returncode == 0:
            doc: dict[str, Any] = json.loads(done.stdout)
            if len(doc["interfaces"]) == 2:
                return doc
        time.sleep(0.5)
    raise AssertionError("the status endpoint never listed the plugged NIC")


def check_schema(body: object) -> None:
    doc = yaml.safe_load((REPO / "launcher" / "status" / "openapi.yaml").read_text())
    jsonschema.Draft202012Validator({**doc, "$ref": "#/components/schemas/Status"}).validate(body)


def pod_links() -> dict[str, dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(sh("ip", "-n", POD, "-j", "addr", "show").stdout)
    return {link["ifname"]: link for link in out}


def records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def wait_record(path: Path, pred: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in records(path):
            if pred(rec):
                return rec
        time.sleep(0.3)
    raise AssertionError(f"no matching launcher log record in {timeout:g}s")


def launch(
    vmm_dir: Path, guest: GuestImage, *extra: str, sec: bool = False
) -> tuple[subprocess.Popen[bytes], ConsoleReader, Path]:
    """Project the spec and podinfo, start ``python -m launcher run`` in the pod netns."""
    del guest  # vmm_dir has its kernel: QEMU runs as the default VMM user, uid 107
    spec_dir, podinfo = vmm_dir / "spec", vmm_dir / "podinfo"
    atomic_write(spec_dir, {"vm.yaml": spec("up" if sec else None)})
    status = (POD_STATUS, SEC_STATUS) if sec else (POD_STATUS,)
    atomic_write(podinfo, {"annotations": podinfo_file(*status)})
    argv = [
        "ip", "netns", "exec", POD, sys.executable, "-m", "launcher", "run",
        "--spec", str(spec_dir / "vm.yaml"),
        "--state-dir", str(vmm_dir / "state"),
        "--volumes-dir", str(vmm_dir / "volumes"),
        "--termination-log", str(vmm_dir / "termination-log"),
        "--podinfo", str(podinfo),
        "--accel", "tcg",
        "--status-listen", f"127.0.0.1:{STATUS_PORT}",
        *extra,
    ]  # fmt: skip
    stderr_path = vmm_dir / "launcher.err"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(vmm_dir / "console.log"))
    return proc, console, stderr_path


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def add_secondary_to_pod() -> None:
    """What Multus dynamic networks do: a new pod interface with its address."""
    veth(POD, SEC_IF, L2, "hpl1")
    sh("ip", "-n", POD, "addr", "add", "10.96.0.5/24", "dev", SEC_IF)
    sh("ip", "-n", L2, "addr", "add", "10.96.0.1/24", "dev", "hpl1")


def test_hot_plug_and_unplug_a_bridge_nic_while_the_first_keeps_serving(
    pod: None, guest: GuestImage, vmm_dir: Path
) -> None:
    del pod
    spec_dir, podinfo = vmm_dir / "spec", vmm_dir / "podinfo"
    proc, console, stderr_path = launch(vmm_dir, guest)
    try:
        console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.95.0.5/24",)
        )
        console.wait_for("READY", BOOT_TIMEOUT_S)
        assert "VL-HTTP-OK port=80" in http_from(PEER, "10.95.0.5")
        before = set(pod_links())

        # 1. a spec that fails validation: refused, logged, nothing changes
        atomic_write(spec_dir, {"vm.yaml": spec("up").replace(b"bridge: {}", b"bridge: {x: 1}")})
        wait_record(stderr_path, lambda r: r.get("event") == "hotplug-refused", PLUG_TIMEOUT_S)
        assert set(pod_links()) == before
        assert "VL-HTTP-OK port=80" in http_from(PEER, "10.95.0.5")

        # 2. Multus adds the pod interface, then the spec gains the interface
        add_secondary_to_pod()
        atomic_write(podinfo, {"annotations": podinfo_file(POD_STATUS, SEC_STATUS)})
        mark = console.mark()
        atomic_write(spec_dir, {"vm.yaml": spec("up")})
        added = console.wait_for("NIC-ADDED", PLUG_TIMEOUT_S, since=mark)
        lease = console.wait_for(
            "LEASE4", PLUG_TIMEOUT_S, since=mark, where=lambda ln: ln.args[:1] == added.args
        )
        assert lease.args[1] == "10.96.0.5/24", lease
        assert "VL-HTTP-OK port=80" in http_from(L2, "10.96.0.5")
        # Plugged by a launcher holding no capability: plumbing, tap fds and the DHCP/RA
        # sockets came from the privileged helper (docs/privileges.md).
        caps = {k: v.strip() for k, _, v in (ln.partition(":") for ln in
                Path(f"/proc/{proc.pid}/status").read_text().splitlines())}  # fmt: skip
        assert (caps["CapEff"], caps["CapPrm"]) == ("0" * 16, "0" * 16)
        status = status_document()
        check_schema(status)
        shown = {i["name"]: i["hotplug"] for i in status["interfaces"]}
        assert shown == {
            "pod": {"state": "boot", "lastError": None},
            "sec": {"state": "plugged", "lastError": None},
        }
        assert "VL-HTTP-OK port=80" in http_from(PEER, "10.95.0.5")
        plugged = set(pod_links()) - before - {SEC_IF}
        assert len(plugged) == 2, plugged  # its bridge and tap
        ruleset = sh("ip", "netns", "exec", POD, "nft", "list", "ruleset").stdout
        assert any(f'"{name}"' in ruleset for name in plugged)

        # 3. state: absent unplugs it and removes its plumbing
        mark = console.mark()
        atomic_write(spec_dir, {"vm.yaml": spec("absent")})
        removed = console.wait_for("NIC-REMOVED", PLUG_TIMEOUT_S, since=mark)
        assert removed.args == added.args
        wait_record(
            stderr_path,
            lambda r: r.get("event") == "hotplug" and r.get("state") == "unplugged",
            PLUG_TIMEOUT_S,
        )
        now = pod_links()
        assert not plugged & set(now), now.keys()
        inet = [f"{a['local']}/{a['prefixlen']}" for a in now[SEC_IF]["addr_info"]
                if a["family"] == "inet"]  # fmt: skip
        assert inet == ["10.96.0.5/24"]
        ruleset = sh("ip", "netns", "exec", POD, "nft", "list", "ruleset").stdout
        assert not any(f'"{name}"' in ruleset for name in plugged), ruleset
        assert "VL-HTTP-OK port=80" in http_from(PEER, "10.95.0.5")
        assert proc.poll() is None
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr_path.read_text()[-3000:]


def test_exit_cleans_up_a_hot_plugged_nic_too(pod: None, guest: GuestImage, vmm_dir: Path) -> None:
    del pod
    spec_dir, podinfo = vmm_dir / "spec", vmm_dir / "podinfo"
    proc, console, stderr_path = launch(vmm_dir, guest)
    try:
        console.wait_for("READY", BOOT_TIMEOUT_S)
        before = set(pod_links())
        add_secondary_to_pod()
        atomic_write(podinfo, {"annotations": podinfo_file(POD_STATUS, SEC_STATUS)})
        mark = console.mark()
        atomic_write(spec_dir, {"vm.yaml": spec("up")})
        added = console.wait_for("NIC-ADDED", PLUG_TIMEOUT_S, since=mark)
        console.wait_for(
            "LEASE4", PLUG_TIMEOUT_S, since=mark, where=lambda ln: ln.args[:1] == added.args
        )
        plugged = set(pod_links()) - before - {SEC_IF}
        assert len(plugged) == 2, plugged
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr_path.read_text()[-3000:]
    now = pod_links()
    assert not any(name.startswith("vl") for name in now), now.keys()
    inet = [f"{a['local']}/{a['prefixlen']}" for a in now[SEC_IF]["addr_info"]
            if a["family"] == "inet"]  # fmt: skip
    assert inet == ["10.96.0.5/24"]


def test_failed_plug_rolls_back_and_the_vm_keeps_running(
    pod: None, guest: GuestImage, vmm_dir: Path
) -> None:
    del pod
    spec_dir, podinfo = vmm_dir / "spec", vmm_dir / "podinfo"
    # no free root port: QEMU cannot take the NIC, so the plug fails after the plumbing
    proc, console, stderr_path = launch(vmm_dir, guest, "--hotplug-ports", "0")
    try:
        console.wait_for("READY", BOOT_TIMEOUT_S)
        before = set(pod_links())
        rules_before = sh("ip", "netns", "exec", POD, "nft", "list", "ruleset").stdout
        add_secondary_to_pod()
        atomic_write(podinfo, {"annotations": podinfo_file(POD_STATUS, SEC_STATUS)})
        atomic_write(spec_dir, {"vm.yaml": spec("up")})
        failed = wait_record(
            stderr_path,
            lambda r: r.get("event") == "hotplug" and r.get("state") == "failed",
            PLUG_TIMEOUT_S,
        )
        assert "no free hot-plug port" in str(failed.get("error")), failed
        now = pod_links()
        assert set(now) == before | {SEC_IF}, now.keys()  # its bridge and tap are gone
        inet = [f"{a['local']}/{a['prefixlen']}" for a in now[SEC_IF]["addr_info"]
                if a["family"] == "inet"]  # fmt: skip
        assert inet == ["10.96.0.5/24"]
        assert "VL-HTTP-OK port=80" in http_from(PEER, "10.95.0.5")
        assert sh("ip", "netns", "exec", POD, "nft", "list", "ruleset").stdout == rules_before
        assert not console.vl_lines("NIC-ADDED"), console.text()[-2000:]
        assert proc.poll() is None
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr_path.read_text()[-3000:]


def test_unplug_of_a_nic_attached_at_boot(pod: None, guest: GuestImage, vmm_dir: Path) -> None:
    del pod
    spec_dir = vmm_dir / "spec"
    add_secondary_to_pod()
    proc, console, stderr_path = launch(vmm_dir, guest, sec=True)
    try:
        lease = console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.96.0.5/24",)
        )
        console.wait_for("READY", BOOT_TIMEOUT_S)
        mark = console.mark()
        atomic_write(spec_dir, {"vm.yaml": spec("absent")})
        removed = console.wait_for("NIC-REMOVED", PLUG_TIMEOUT_S, since=mark)
        assert removed.args == lease.args[:1]
        wait_record(
            stderr_path,
            lambda r: r.get("event") == "hotplug" and r.get("state") == "unplugged",
            PLUG_TIMEOUT_S,
        )
        now = pod_links()
        assert sorted(n for n in now if n.startswith("vl")) == ["vlbr0", "vltap0"], now.keys()
        inet = [f"{a['local']}/{a['prefixlen']}" for a in now[SEC_IF]["addr_info"]
                if a["family"] == "inet"]  # fmt: skip
        assert inet == ["10.96.0.5/24"]
        assert "VL-HTTP-OK port=80" in http_from(PEER, "10.95.0.5")
        time.sleep(2)  # the run's cancelled DHCP tasks of that NIC must not end the run
        assert proc.poll() is None, stderr_path.read_text()[-3000:]
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr_path.read_text()[-3000:]

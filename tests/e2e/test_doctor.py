"""E2E: the network doctor (``/status`` ``interfaces[].diagnosis``) on a real guest under QEMU.

Each test builds a pod/peer netns pair (``testbed.netns.Topology``, random names) as a CNI
leaves it, runs ``python -m launcher run`` inside the pod netns with the test guest
(bridge binding, dual stack) and reads ``/status`` from the pod's loopback. The bad cases
are made for real, never injected into the doctor: a Calico-style /32 pod, a guest
frozen with SIGSTOP, a tap whose MTU is changed underneath, a guest that changes its MAC
(``vl.mac=``) and one without any DHCP client (``vl.nodhcp=1``) — the guest's knobs are
in docs/guest.md. Every document is validated against launcher/status/openapi.yaml;
``/metrics`` is parsed with prometheus-client's parser and compared with ``/status``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed.guest.build import GuestImage
from testbed.launch import REPO, Launcher, start
from testbed.netns import Topology, nsrun

OPENAPI = REPO / "launcher" / "status" / "openapi.yaml"
LISTEN = "127.0.0.1:8186"
BOOT_ARGS = "console=ttyS0 quiet loglevel=1 panic=-1"
#: A frozen guest must turn the verdict within the doctor's 10 s bound; the probe itself
#: (1 s), the status cache and this test's 1 s polling add their share.
FROZEN_BOUND_S = 14.0

pytestmark = pytest.mark.timeout(240)


def spec_yaml(kernel_args: str) -> str:
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: doc-vm
  namespace: e2e
spec:
  terminationGracePeriodSeconds: 10
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    firmware:
      kernelBoot:
        container:
          image: localhost/doc-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "{kernel_args}"
    devices:
      interfaces:
        - name: pod
          bridge: {{}}
  networks:
    - name: pod
      pod: {{}}
"""


def check(name: str, body: object) -> None:
    doc = yaml.safe_load(OPENAPI.read_text())
    jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{name}"}).validate(body)


@dataclass
class Vm:
    """A launcher with its VM in a fresh pod (``topo``)."""

    topo: Topology
    launcher: Launcher

    def get(self, path: str) -> str:
        done = nsrun(self.topo.pod, "curl", "-sS", "--max-time", "10", "-f",
                     self.launcher.url(path), timeout=20)  # fmt: skip
        return done.stdout

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.get("/status"))
        check("Status", doc)
        return doc

    def diagnosis(self) -> dict[str, Any]:
        doc = self.status()
        assert len(doc["interfaces"]) == 1, doc["interfaces"]
        return dict(doc["interfaces"][0])

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first interface view (with its diagnosis) satisfying ``pred`` (bounded)."""
        deadline = time.monotonic() + timeout
        iface: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.launcher.proc.poll() is not None:
                raise AssertionError(f"launcher exited:\n{self.launcher.log()[-3000:]}")
            try:
                iface = self.diagnosis()
            except AssertionError:  # not listening yet (curl failed)
                time.sleep(0.5)
                continue
            if iface.get("diagnosis") and pred(iface):
                return iface
            time.sleep(1.0)
        raise AssertionError(f"no diagnosis satisfied the check: {json.dumps(iface)[:4000]}")

    def cli(self) -> str:
        done = nsrun(self.topo.pod, sys.executable, "-m", "launcher", "status",
                     "--status-listen", LISTEN, timeout=30)  # fmt: skip
        return done.stdout


@pytest.fixture
def run_vm(tmp_path: Path, guest: GuestImage) -> Iterator[Callable[..., Vm]]:
    started: list[Vm] = []

    def run(*, calico32: bool = False, knobs: str = "", env: dict[str, str] | None = None) -> Vm:
        topo = Topology().create(calico32=calico32)
        spec = spec_yaml(f"{BOOT_ARGS} {knobs}".strip())
        vm = Vm(topo, start(tmp_path, guest, topo.pod, spec, listen=LISTEN, env=env))
        started.append(vm)
        return vm

    try:
        yield run
    finally:
        for vm in started:
            vm.launcher.stop()
            vm.topo.destroy()


def codes(iface: dict[str, Any]) -> list[str]:
    return [f["code"] for f in iface["diagnosis"]["findings"]]


def probe(iface: dict[str, Any], target: str) -> dict[str, Any]:
    found = [p for p in iface["diagnosis"]["probes"] if p["target"] == target]
    assert len(found) == 1, iface["diagnosis"]["probes"]
    return dict(found[0])


def metrics(vm: Vm) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(vm.get("/metrics")):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def healthy(iface: dict[str, Any]) -> bool:
    d = iface["diagnosis"]
    answered = {p["target"]: p["answered"] for p in d["probes"]}
    return (
        d["verdict"] == "ok" and answered.get("10.77.0.5") is True and bool(answered.get("fd77::5"))
    )


def test_calico_pod_healthy_then_frozen_then_mtu(run_vm: Callable[..., Vm]) -> None:
    vm = run_vm(calico32=True)
    iface = vm.wait(healthy, timeout=90)
    d = iface["diagnosis"]
    # healthy: the guest holds its lease and answers ARP and ND from the planned MAC, the
    # pod's link-local gateway answers; the /32 + 169.254.1.1 set-up is named, not blamed
    assert codes(iface) == ["calico-32"], d["findings"]
    assert d["findings"][0]["severity"] == "info"
    assert probe(iface, "10.77.0.5")["mac"] == iface["mac"]
    assert probe(iface, "fd77::5")["mac"] == iface["mac"]
    assert probe(iface, "169.254.1.1")["answered"] is True
    assert d["dhcp4"]["last"] == "ack"
    assert d["lease"]["renewDueSeconds"] == 86400 / 2
    assert d["mtu"]["tap"] == d["mtu"]["planned"] == d["mtu"]["pod"] == 1440
    assert "holds its DHCPv4 lease" in d["reason"]
    out = vm.cli()
    assert "DIAGNOSIS" in out and "pod: ok - " in out, out

    # KubeVirt's series under KubeVirt's names, consistent with /status
    before = vm.diagnosis()["traffic"]
    m = metrics(vm)
    after = vm.diagnosis()["traffic"]
    labels = frozenset({("namespace", "e2e"), ("name", "doc-vm"), ("interface", "pod")})
    rx = m[("kubevirt_vmi_network_receive_bytes_total", labels)]
    assert before["rxBytes"] <= rx <= after["rxBytes"]
    tx_packets = m[("kubevirt_vmi_network_transmit_packets_total", labels)]
    assert before["txPackets"] <= tx_packets <= after["txPackets"]
    assert m[("kubevirt_vmi_network_receive_errors_total", labels)] == 0
    vnic = frozenset({("name", "doc-vm"), ("namespace", "e2e"), ("vnic_name", "pod"),
                      ("binding_type", "core"), ("network", "pod networking"),
                      ("binding_name", "bridge")})  # fmt: skip
    assert m[("kubevirt_vmi_vnic_info", vnic)] == 1
    address = frozenset({("namespace", "e2e"), ("name", "doc-vm"), ("network_name", "pod"),
                         ("address", "10.77.0.5"), ("type", "InternalIP")})  # fmt: skip
    assert m[("kubevirt_vmi_status_addresses", address)] == 1
    ok = frozenset({("interface", "pod"), ("verdict", "ok")})
    assert m[("virt_launcher_network_verdict", ok)] == 1

    # a frozen guest turns the verdict within the bound, and comes back
    pid = vm.launcher.qemu_pid()
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        frozen = vm.wait(lambda i: "guest-silent" in codes(i), timeout=30)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert frozen["diagnosis"]["verdict"] == "no-network"
    assert took <= FROZEN_BOUND_S, f"frozen guest seen after {took:.1f} s"
    assert "does not answer" in frozen["diagnosis"]["reason"]
    vm.wait(healthy, timeout=40)

    # the tap's MTU changed underneath: degraded, naming both numbers
    nsrun(vm.topo.pod, "ip", "link", "set", iface["tap"], "mtu", "1300")
    changed = vm.wait(lambda i: "mtu-changed" in codes(i), timeout=15)
    assert changed["diagnosis"]["verdict"] == "degraded"
    assert "1300" in changed["diagnosis"]["reason"] and "1440" in changed["diagnosis"]["reason"]


def test_guest_with_another_mac(run_vm: Callable[..., Vm]) -> None:
    stranger = "02:de:ad:be:ef:01"
    vm = run_vm(knobs=f"vl.mac={stranger}")
    iface = vm.wait(lambda i: "unknown-mac" in codes(i), timeout=90)
    d = iface["diagnosis"]
    assert d["verdict"] == "no-network"
    assert stranger in d["reason"] and iface["mac"] in d["reason"]
    assert "macAddress" in d["reason"]  # the fix names the spec field
    out = vm.cli()
    assert "unknown-mac: " in out and stranger in out, out


def test_guest_without_dhcp_client(run_vm: Callable[..., Vm]) -> None:
    vm = run_vm(knobs="vl.nodhcp=1", env={"VIRT_LAUNCHER_DOCTOR_SILENT_S": "5"})
    iface = vm.wait(lambda i: "no-dhcp-traffic" in codes(i), timeout=90)
    d = iface["diagnosis"]
    assert d["verdict"] == "no-network"
    assert d["findings"][0]["code"] == "no-dhcp-traffic"
    assert "no DHCP client" in d["reason"] and "10.77.0.5" in d["reason"]
    assert d["dhcp4"]["last"] is None and d["dhcp4"]["messages"] == []
    out = vm.cli()
    assert "pod: no-network - " in out and "next: " in out, out

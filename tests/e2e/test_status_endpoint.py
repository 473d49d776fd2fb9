"""E2E: the status endpoint of a real ``virt-launcher run`` with the test guest under QEMU.

A pod netns (``st-pod-<pid>``) wired to a peer netns (``st-peer-<pid>``) like a CNI
leaves it; the launcher runs inside the pod netns (``ip netns exec``) exactly as the pod
entrypoint. Every endpoint is requested from inside the pod netns over its loopback
(curl, ``virt-launcher status``, headless Chromium), JSON answers are validated against
launcher/status/openapi.yaml, and what they say is compared with what the guest itself
reports on its serial console (its leases) and with QEMU's real pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from testbed import launch
from testbed.guest.build import GuestImage
from testbed.harness import sh, simulated_pod
from testbed.launch import REPO, Launcher

OPENAPI = REPO / "launcher" / "status" / "openapi.yaml"
SUFFIX = os.getpid() % 100000
POD = f"st-pod-{SUFFIX}"
PEER = f"st-peer-{SUFFIX}"
PEER_IF = "stq0"
POD4, PEER4 = "10.89.0.5", "10.89.0.1"
POD6, PEER6 = "fd89::5", "fd89::1"
SECRET = "st-e2e-Secr3t-passw0rd"
BOOT_TIMEOUT_S = 60.0
SCREENSHOT = Path(tempfile.gettempdir()) / "st-status-page.png"

pytestmark = pytest.mark.timeout(150)


def in_pod(
    *argv: str, timeout: float = 20.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", POD, *argv, timeout=timeout, check=check)


def spec_yaml(binding: str) -> str:
    iface = "bridge: {}" if binding == "bridge" else "masquerade: {}"
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: st-vm
  namespace: e2e
  annotations:
    st.example/db-password: "{SECRET}"
spec:
  hostname: st-guest
  terminationGracePeriodSeconds: 15
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    firmware:
      kernelBoot:
        container:
          image: localhost/st-guest:latest
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


def check(name: str, body: object) -> None:
    doc = yaml.safe_load(OPENAPI.read_text())
    jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{name}"}).validate(body)


@pytest.fixture
def pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, PEER_IF, (POD4, PEER4), (POD6, PEER6)):
        yield


def get(launcher: Launcher, path: str, method: str = "GET") -> tuple[int, str]:
    """(HTTP status, body) of a request from inside the pod netns."""
    done = in_pod(
        "curl", "-sS", "--max-time", "5", "-X", method, "-o", "-", "-w", "\n%{http_code}",
        launcher.url(path), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def status(launcher: Launcher) -> dict[str, Any]:
    code, body = get(launcher, "/status")
    assert code == 200, body
    doc: dict[str, Any] = json.loads(body)
    check("Status", doc)
    return doc


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    try:
        yield started
    finally:
        for launcher in started:
            launcher.stop()


def start(tmp: Path, guest: GuestImage, binding: str, listen: str) -> Launcher:
    return launch.start(tmp, guest, POD, spec_yaml(binding), listen=listen)


def wait_ready(launcher: Launcher, timeout: float = BOOT_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        if launcher.proc.poll() is not None:
            raise AssertionError(f"launcher exited:\n{launcher.stderr_path.read_text()[-3000:]}")
        done = in_pod("curl", "-sS", "--max-time", "2", "-o", "-", "-w", "\n%{http_code}",
                      launcher.url("/readyz"), check=False)  # fmt: skip
        if done.returncode == 0:
            body, _, code = done.stdout.rpartition("\n")
            last = (int(code), body)
            check("Ready", json.loads(body))
            if last[0] == 200:
                return dict(json.loads(body))
        time.sleep(0.5)
    raise AssertionError(f"/readyz never answered 200; last answer {last}")


def wait_status(launcher: Launcher, pred: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = status(launcher)
        if pred(doc):
            return doc
        time.sleep(1.0)
    raise AssertionError(f"/status never satisfied the condition: {json.dumps(doc)[:3000]}")


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is missing: run scripts/install.sh")
    profile = tempfile.mkdtemp(prefix="st-chromium-")
    try:
        return in_pod(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
            timeout=90, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_every_endpoint_with_a_real_guest_on_the_bridge_binding(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(tmp_path, guest, "bridge", "127.0.0.1:8186")
    launchers.append(launcher)
    lease4 = launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    assert lease4.args == ("eth0", f"{POD4}/24")
    ready = wait_ready(launcher)
    assert ready["phase"] == "Running" and all(ready["conditions"].values())

    # /status: the guest's addresses and leases, the real QEMU process, the pod wiring.
    doc = wait_status(
        launcher,
        lambda d: (
            {POD4, POD6} <= set(d["interfaces"][0]["ipAddresses"])
            and d["interfaces"][0]["traffic"]["rxBytes"] > 0
        ),
    )
    assert (doc["vm"], doc["phase"], doc["ready"]) == ("e2e/st-vm", "Running", True)
    hv = doc["hypervisor"]
    assert (hv["kind"], hv["pid"], hv["state"]) == ("qemu", launcher.qemu_pid(), "Running")
    assert hv["rssBytes"] > 50 << 20 and hv["cpuSeconds"] > 0
    assert 0 < doc["launcher"]["timeToReadySeconds"] < BOOT_TIMEOUT_S
    iface = doc["interfaces"][0]
    assert (iface["name"], iface["binding"], iface["podInterface"]) == ("pod", "bridge", "eth0")
    assert (iface["linkState"], iface["queueCount"], iface["ipAddress"]) == ("up", 1, POD4)
    assert iface["tap"] and iface["bridge"]
    families = {lease["family"]: lease["address"] for lease in iface["leases"]}
    assert families == {"ipv4": POD4, "ipv6": POD6}
    assert iface["dhcp"]["offers"] >= 1 and iface["dhcp"]["acks"] >= 1
    assert iface["dhcp"]["naks"] == 0 and iface["dhcp"]["declines"] == 0
    assert iface["dhcp"]["routerAdverts"] >= 1
    kinds = {(e["source"], e["kind"]) for e in doc["events"]}
    assert {("dhcp4", "offer"), ("dhcp4", "ack"), ("dhcp6", "bound")} <= kinds
    assert ("launcher", "HypervisorRunning=True") in kinds
    conds = {c["type"]: c for c in doc["conditions"]}
    assert conds["HypervisorRunning"]["status"] == "True"

    # /healthz, /metrics, HEAD, 405, 404.
    code, body = get(launcher, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, metrics = get(launcher, "/metrics")
    assert code == 200
    lines = metrics.splitlines()
    assert "virt_launcher_hypervisor_up 1.0" in lines
    assert 'virt_launcher_hypervisor_state{kind="qemu",state="Running"} 1.0' in lines
    acks = [ln for ln in lines if 'family="ipv4",interface="pod",type="ack"' in ln]
    assert len(acks) == 1 and float(acks[0].split()[-1]) >= 1
    rx = [ln for ln in lines if ln.startswith("virt_launcher_guest_nic_rx_bytes_total{")]
    assert len(rx) == 1 and float(rx[0].split()[-1]) > 0
    assert any(ln.startswith("virt_launcher_time_to_ready_seconds ") for ln in lines)
    assert get(launcher, "/status", "POST")[0] == 405
    assert get(launcher, "/", "DELETE")[0] == 405
    assert get(launcher, "/nope")[0] == 404
    head = in_pod("curl", "-sS", "-I", "--max-time", "5", launcher.url("/status"))
    assert head.stdout.startswith("HTTP/1.1 200")

    # Never on the pod IP: from the peer, nothing answers at the pod's address:8186.
    probe = sh("ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "3",
               f"http://{POD4}:8186/status", check=False)  # fmt: skip
    assert probe.returncode != 0 and "st-vm" not in probe.stdout

    # `virt-launcher status` for a terminal user, and --json.
    table = in_pod(sys.executable, "-m", "launcher", "status", "--status-listen", "127.0.0.1:8186")
    first = table.stdout.splitlines()[0]
    assert first == "VM e2e/st-vm: Running, ready", table.stdout
    row = next(ln for ln in table.stdout.splitlines() if ln.startswith("pod "))
    assert "bridge" in row and POD4 in row and " up " in row
    raw = in_pod(sys.executable, "-m", "launcher", "status", "--json")
    assert json.loads(raw.stdout)["vm"] == "e2e/st-vm"

    # The page, rendered by headless Chromium after its script fetched /status.
    dom = chromium("--virtual-time-budget=4000", "--dump-dom", launcher.url("/"))
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "e2e/st-vm" in dom.stdout and POD4 in dom.stdout
    assert "Running · ready" in dom.stdout and "HypervisorRunning" in dom.stdout
    assert '<div id="error"></div>' in dom.stdout  # the fetch did not fail
    SCREENSHOT.unlink(missing_ok=True)
    shot = chromium(
        "--virtual-time-budget=4000", "--hide-scrollbars", "--window-size=1280,900",
        f"--screenshot={SCREENSHOT}", launcher.url("/"),
    )  # fmt: skip
    assert shot.returncode == 0, shot.stderr[-2000:]
    png = SCREENSHOT.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, len(png)

    # Logs: JSON lines on stderr carrying vm (and iface for DHCP); the console on stdout.
    records = launcher.records()
    listening = [r for r in records if r.get("event") == "status-listening"]
    assert len(listening) == 1, records
    assert (listening[0]["vm"], listening[0]["listen"]) == ("e2e/st-vm", "127.0.0.1:8186")
    assert any(r.get("iface") and r.get("vm") == "e2e/st-vm" for r in records)
    assert all(r.get("vm") == "e2e/st-vm" for r in records if r.get("logger", "").startswith(
        "launcher.status"))  # fmt: skip
    assert any(ln.startswith("serial: ") for ln in launcher.console.text().splitlines())

    # Nothing secret anywhere.
    everything = [get(launcher, p)[1] for p in ("/", "/status", "/metrics", "/readyz")]
    everything.append(dom.stdout)
    assert SECRET not in "\n".join(everything)


def test_masquerade_keeps_the_status_port_out_of_dnat_and_learns_the_guest_ip(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    # The guest serves 80 and 8080; masquerade without ports DNATs every port except the
    # launcher's own: 8080 is the status port here, so it must stay with the launcher.
    launcher = start(tmp_path, guest, "masquerade", "127.0.0.1:8080")
    launchers.append(launcher)
    launcher.console.wait_for("READY", BOOT_TIMEOUT_S)
    wait_ready(launcher)

    def peer(url: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "3", url,
                  check=False)  # fmt: skip

    for _ in range(10):
        if "VL-HTTP-OK port=80" in peer(f"http://{POD4}:80/").stdout:
            break
        time.sleep(1)
    else:
        raise AssertionError("the guest never answered on port 80 through masquerade")
    to_status_port = peer(f"http://{POD4}:8080/")
    assert "VL-HTTP-OK" not in to_status_port.stdout
    doc = wait_status(launcher, lambda d: "neighbour-table" in d["interfaces"][0]["infoSource"])
    iface = doc["interfaces"][0]
    assert iface["binding"] == "masquerade"
    assert iface["ipAddress"] == "10.0.2.2" and "10.0.2.2" in iface["ipAddresses"]
    assert iface["infoSource"] == "domain, dhcp-lease, neighbour-table"
    assert doc["nftables"]["digest"].startswith("sha256:")
    nft = in_pod("nft", "list", "ruleset").stdout
    assert "8080" in nft

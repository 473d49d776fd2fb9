"""E2E: ``python -m launcher run`` boots the real test guest under QEMU (TCG) in a simulated pod.

Each test makes a pod netns (``rn-pod-<pid>``) whose ``eth0`` is a veth to a peer netns
(``rn-peer-<pid>``, the "cluster"), with an IPv4 /24 and an IPv6 /64 address and default
routes via the peer, as a CNI would leave it. The launcher runs inside the pod netns as
a subprocess (``ip netns exec``), exactly as the pod entrypoint; its stdout carries the
guest's serial console (``serial: VL-...`` lines, see docs/guest.md), its stderr the
JSON log. Checked: the bridge binding hands the guest exactly the pod's addresses and the
peer reaches its HTTP server at the pod IP; masquerade forwards a listed port and not an
unlisted one; SIGTERM presses the power button and ends with exit 0 within the grace
period; a killed VMM ends the launcher with exit 4 and a cause in stderr and the
termination log; a launcher restarted after a crash gives the guest the same address.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from testbed import launch
from testbed.guest.build import GuestImage
from testbed.harness import http_body, sh, simulated_pod
from testbed.launch import REPO, Launcher, host_pid_of_qemu, kill_qemu

__all__ = ["REPO", "Launcher", "host_pid_of_qemu", "kill_qemu", "launchers", "pod"]

SUFFIX = os.getpid() % 100000
POD = f"rn-pod-{SUFFIX}"
PEER = f"rn-peer-{SUFFIX}"
PEER_IF = "rnq0"
POD4, PEER4 = "10.88.0.5", "10.88.0.1"
POD6, PEER6 = "fd88::5", "fd88::1"
GRACE_S = 20
BOOT_TIMEOUT_S = 60.0  # launcher start → guest lease under TCG; normally about 8 s
EXIT_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(90)


def spec_yaml(
    binding: str,
    grace_s: int = GRACE_S,
    kernel_args: str = "console=ttyS0 quiet loglevel=1 panic=-1",
) -> str:
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
  name: rn-vm
  namespace: e2e
spec:
  hostname: rn-guest
  terminationGracePeriodSeconds: {grace_s}
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    firmware:
      kernelBoot:
        container:
          image: localhost/rn-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "{kernel_args}"
    devices:
      interfaces:
        - name: pod
          {iface}
  networks:
    - name: pod
      pod: {{}}
"""


@pytest.fixture
def pod() -> Iterator[None]:
    """Pod and peer netns wired by a veth; pod eth0 as a CNI leaves it."""
    with simulated_pod(POD, PEER, PEER_IF, (POD4, PEER4), (POD6, PEER6)):
        yield


def start(
    tmp: Path,
    guest: GuestImage,
    binding: str = "bridge",
    run: int = 0,
    *,
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
    spec_text: str | None = None,
    vmm_user: str | None = "keep",
) -> Launcher:
    """Start ``virt-launcher run`` in the pod netns (``prefix`` goes before ``ip netns exec``;
    ``vmm_user`` as in :func:`testbed.launch.start`)."""
    spec = spec_text or spec_yaml(binding)
    return launch.start(
        tmp, guest, POD, spec, run=run, extra=extra, prefix=prefix, vmm_user=vmm_user
    )


def peer_http(url: str, attempts: int = 15) -> str:
    """GET ``url`` from the peer netns (bounded retries); the body, or '' if it never answered."""
    return http_body(PEER, url, attempts)


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    try:
        yield started
    finally:
        for launcher in started:
            launcher.stop()


def test_bridge_guest_gets_pod_addresses_and_serves_http_at_pod_ip(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(tmp_path, guest)
    launchers.append(launcher)
    lease4 = launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    lease6 = launcher.console.wait_for("LEASE6", BOOT_TIMEOUT_S)
    assert lease4.args == ("eth0", f"{POD4}/24")
    assert lease4.fields["router"] == PEER4
    assert lease6.args == ("eth0", f"{POD6}/128")
    addrs = launcher.console.wait_for(
        "ADDRS", 20, where=lambda ln: any(a.startswith(POD6) for a in ln.args)
    )
    global_addrs = sorted(a for a in addrs.args[1:] if not a.startswith("fe80:"))
    assert global_addrs == sorted([f"{POD4}/24", f"{POD6}/128"])
    # The pod interface gave its address away (it lives in the guest now).
    pod_addrs = sh("ip", "-n", POD, "-br", "addr", "show", "eth0").stdout
    assert POD4 not in pod_addrs
    body4 = peer_http(f"http://{POD4}/")
    assert "VL-HTTP-OK port=80 hostname=rn-guest" in body4
    body6 = peer_http(f"http://[{POD6}]/")
    assert "VL-HTTP-OK port=80 hostname=rn-guest" in body6


def test_pod_interface_not_called_eth0(guest: GuestImage, tmp_path: Path) -> None:
    with simulated_pod(POD, PEER, PEER_IF, (POD4, PEER4), (POD6, PEER6), pod_if="ens5"):
        launcher = start(tmp_path, guest, extra=["--pod-interface", "ens5"])
        try:
            lease4 = launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
            assert lease4.args == ("eth0", f"{POD4}/24")  # the guest's own eth0
            assert "master vlbr0" in sh("ip", "-n", POD, "-o", "link", "show", "ens5").stdout
            assert "VL-HTTP-OK" in peer_http(f"http://{POD4}/")
        finally:
            launcher.stop()
        assert launcher.proc.returncode == 0


def test_masquerade_forwards_listed_port_only(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(tmp_path, guest, "masquerade")
    launchers.append(launcher)
    lease4 = launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    assert lease4.args[0] == "eth0" and lease4.args[1].startswith("10.0.2.2/")
    launcher.console.wait_for("READY", BOOT_TIMEOUT_S)
    assert "VL-HTTP-OK port=80 hostname=rn-guest" in peer_http(f"http://{POD4}:80/")
    lease6 = launcher.console.wait_for("LEASE6", BOOT_TIMEOUT_S)
    assert lease6.args == ("eth0", "fd10:0:2::2/128")
    assert "VL-HTTP-OK port=80 hostname=rn-guest" in peer_http(f"http://[{POD6}]:80/")
    # The guest serves 8080 too (docs/guest.md), but 8080 is not listed: no DNAT.
    refused = sh(
        "ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "3", f"http://{POD4}:8080/",
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    assert "VL-HTTP-OK" not in refused.stdout


def test_sigterm_presses_power_button_and_exits_0(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(tmp_path, guest)
    launchers.append(launcher)
    launcher.console.wait_for("READY", BOOT_TIMEOUT_S)
    mark = launcher.console.mark()
    sent = time.monotonic()
    launcher.proc.send_signal(signal.SIGTERM)
    launcher.console.wait_for("POWER-BUTTON", GRACE_S, since=mark)
    launcher.console.wait_for("POWEROFF", GRACE_S, since=mark)
    code = launcher.wait(GRACE_S + 5)
    took = time.monotonic() - sent
    assert code == 0, launcher.stderr_path.read_text()[-3000:]
    assert took < GRACE_S, f"exit took {took:.1f} s, not within the {GRACE_S} s grace period"
    assert "guest powered off after SIGTERM" in launcher.termination_log.read_text()
    # The log tells the run's story: the spec, then every phase once, in order.
    records = launcher.records()
    assert [r["event"] for r in records if r.get("event") == "spec-loaded"] == ["spec-loaded"]
    phases = [r["phase"] for r in records if r.get("event") == "phase"]
    assert phases == [
        "network", "dhcp", "hypervisor", "running", "stopping", "cleanup", "exited"
    ], phases  # fmt: skip
    # Cleanup gave the pod interface its address back and removed the launcher's links.
    pod_links = sh("ip", "-n", POD, "-br", "addr").stdout
    assert POD4 in pod_links and "vlbr0" not in pod_links and "vltap0" not in pod_links


def test_killed_vmm_exits_4_with_cause(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(tmp_path, guest)
    launchers.append(launcher)
    launcher.console.wait_for("BOOT", BOOT_TIMEOUT_S)
    os.kill(launcher.qemu_pid(), signal.SIGKILL)
    code = launcher.wait(EXIT_TIMEOUT_S)
    log = launcher.stderr_path.read_text()[-4000:]
    assert code == 4, log
    errors = [r for r in launcher.records() if r.get("level") == "error"]
    assert len(errors) == 1, log
    assert "killed by SIGKILL" in str(errors[0]["msg"])
    assert launcher.termination_log.read_text().strip() == errors[0]["msg"]


def test_restart_after_crash_gives_same_address(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    first = start(tmp_path, guest, run=0)
    launchers.append(first)
    lease = first.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    assert lease.args[1] == f"{POD4}/24"
    first.proc.kill()  # the launcher crashes; kubelet restarts the container
    first.wait(10)
    kill_qemu(first)
    second = start(tmp_path, guest, run=1)
    launchers.append(second)
    lease4 = second.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    lease6 = second.console.wait_for("LEASE6", BOOT_TIMEOUT_S)
    assert lease4.args == ("eth0", f"{POD4}/24")
    assert lease6.args == ("eth0", f"{POD6}/128")
    assert "VL-HTTP-OK port=80" in peer_http(f"http://{POD4}/")


def test_as_pid_1_reaper_keeps_vmm_exit_status_and_sigterm_works(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    """The launcher as PID 1 of its own pid namespace (as in a container): the orphan
    reaper runs and must not steal QEMU's exit status; SIGTERM still ends cleanly."""
    del pod
    prefix = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    first = start(tmp_path, guest, run=0, prefix=prefix)
    launchers.append(first)
    first.console.wait_for("READY", BOOT_TIMEOUT_S)
    assert any(r.get("event") == "reaper-started" for r in first.records())
    os.kill(first.qemu_pid(), signal.SIGKILL)
    assert first.wait(EXIT_TIMEOUT_S) == 4, first.stderr_path.read_text()[-3000:]
    assert "killed by SIGKILL" in first.termination_log.read_text()
    second = start(tmp_path, guest, run=1, prefix=prefix)
    launchers.append(second)
    second.console.wait_for("READY", BOOT_TIMEOUT_S)
    mark = second.console.mark()
    # unshare 2.38 does not forward signals: signal PID 1 itself, as the runtime would.
    children = Path(f"/proc/{second.proc.pid}/task/{second.proc.pid}/children").read_text()
    (launcher_pid,) = (int(p) for p in children.split())
    os.kill(launcher_pid, signal.SIGTERM)
    second.console.wait_for("POWER-BUTTON", GRACE_S, since=mark)
    assert second.wait(GRACE_S + 5) == 0, second.stderr_path.read_text()[-3000:]

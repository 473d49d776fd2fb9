"""E2E: the link refresh after a pod address change, with the real test guest (QEMU/TCG).

``python -m launcher run`` boots the test guest in a simulated pod (``lr-pod-<pid>``,
eth0 10.97.0.5/24 behind the peer at 10.97.0.1) with one bridge interface; the guest
leases 10.97.0.5 and the peer reaches it. Then the "CNI" puts a new address,
10.97.0.7/24, on eth0 (``ip addr add``, as a CNI that runs again would). Checked: the
launcher logs ``link-refresh`` naming the old and new addresses, moves 10.97.0.7 off
eth0, shows the event in ``/status``; the guest's console shows its carrier go down and
come back (QEMU ``set_link``), it runs DHCP again (``VL-LINK-FLAP``: it first asks for its
old address) and leases 10.97.0.7; the peer reaches it at 10.97.0.7 and no longer at
10.97.0.5. After SIGTERM (exit 0) eth0 holds 10.97.0.7/24 again: the CNI's current
address, not the one the launcher started with. One boot; well under 90 s under TCG.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.guest.build import GuestImage
from testbed.harness import http_body, sh, simulated_pod
from testbed.launch import EXIT_TIMEOUT_S, Launcher, start

SUFFIX = os.getpid() % 100000
POD, PEER = f"lr-pod-{SUFFIX}", f"lr-peer-{SUFFIX}"
OLD, NEW, GATEWAY = "10.97.0.5", "10.97.0.7", "10.97.0.1"
STATUS_PORT = 18795
BOOT_TIMEOUT_S = 60.0

pytestmark = pytest.mark.timeout(150)

SPEC = b"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: lr-vm, namespace: e2e}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    memory: {guest: 256Mi}
    firmware:
      kernelBoot:
        container:
          image: localhost/lr-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1"
    devices:
      interfaces:
        - {name: pod, bridge: {}}
  networks:
    - {name: pod, pod: {}}
"""


def reachable(address: str, attempts: int) -> bool:
    for _ in range(attempts):
        done = sh("ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "1",
                  f"http://{address}/", check=False, timeout=10)  # fmt: skip
        if done.returncode == 0 and "VL-HTTP-OK" in done.stdout:
            return True
        time.sleep(0.5)
    return False


def wait_record(launcher: Launcher, event: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in launcher.records():
            if record.get("event") == event:
                return record
        time.sleep(0.2)
    raise AssertionError(f"no {event!r} record within {timeout:g}s:\n{launcher.log()[-3000:]}")


def pod_addresses() -> list[str]:
    done = sh("ip", "-n", POD, "-j", "addr", "show", "dev", "eth0")
    return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(done.stdout)[0]["addr_info"]
            if a["family"] == "inet"]  # fmt: skip


def status_events(launcher: Launcher) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(http_body(POD, launcher.url("/status")))["events"]
    return events


def test_pod_address_change_refreshes_the_link_and_the_guest_leases_the_new_address(
    guest: GuestImage, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{STATUS_PORT}"
    with simulated_pod(POD, PEER, "lrp0", (OLD, GATEWAY)):
        with start(tmp_path, guest, POD, SPEC, listen=listen) as launcher:
            console = launcher.console
            console.wait_for(
                "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == (f"{OLD}/24",)
            )
            assert reachable(OLD, 20)
            wait_record(launcher, "privileges-dropped", 10)  # the refresh runs unprivileged

            mark = console.mark()
            sh("ip", "-n", POD, "addr", "add", f"{NEW}/24", "dev", "eth0")  # the CNI, again
            console.wait_for("CARRIER", 20, since=mark, where=lambda ln: ln.args == ("eth0", "0"))
            flap = console.wait_for("LINK-FLAP", 30, since=mark)
            assert flap.fields.get("old") == OLD, flap  # it asked for its old address first
            lease = console.wait_for(
                "LEASE4", 30, since=mark, where=lambda ln: ln.args[1:2] == (f"{NEW}/24",)
            )
            assert lease.fields.get("router") == GATEWAY, lease
            record = wait_record(launcher, "link-refresh", 10)
            assert record["interface"] == "pod" and record["refreshed"] is True, record
            assert record["old"] == [f"{OLD}/24"] and record["new"] == [f"{NEW}/24"], record
            assert NEW in record["reason"], record
            assert pod_addresses() == [], pod_addresses()  # moved off the pod port again
            assert reachable(NEW, 20)
            assert not reachable(OLD, 2)
            refresh = [e for e in status_events(launcher) if e["kind"] == "link-refresh"]
            assert refresh and refresh[0]["iface"] == "pod" and NEW in refresh[0]["message"]
            launcher.proc.send_signal(signal.SIGTERM)
            assert launcher.wait(EXIT_TIMEOUT_S) == 0, launcher.log()[-3000:]
        log = launcher.log()
        assert pod_addresses() == [f"{NEW}/24"], log[-3000:]  # the CNI's address, given back
    assert log.count('"event":"link-refresh"') == 1, log[-3000:]

"""E2E: interface link state with the real test guest under QEMU/TCG.

``python -m launcher run`` boots the test guest in a simulated pod (``ls-pod-<pid>``,
eth0 10.96.0.5/24 behind the peer) with its one bridge interface ``state: down``. The
spec is projected the way kubelet does (``..data`` swaps), so the hot-plug watcher sees
each change. Checked: at boot the guest's NIC has no carrier, gets no lease and
``/status`` says ``linkState: down``; ``state: up`` gives it carrier, its lease and the
peer reaches it (``linkState: up``, a ``link-state`` log record); ``state: down`` again
takes the carrier away and the peer cannot reach the guest any more.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.guest.build import GuestImage
from testbed.harness import sh, simulated_pod
from testbed.launch import start
from tests.component.hotplug.atomic import atomic_write

SUFFIX = os.getpid() % 100000
POD, PEER = f"ls-pod-{SUFFIX}", f"ls-peer-{SUFFIX}"
STATUS_PORT = 18791
BOOT_TIMEOUT_S = 60.0

pytestmark = pytest.mark.timeout(180)


def spec(state: str) -> bytes:
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: ls-vm, namespace: e2e}}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    memory: {{guest: 256Mi}}
    firmware:
      kernelBoot:
        container:
          image: localhost/ls-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1 vl.ready_timeout=3"
    devices:
      interfaces:
        - {{name: pod, bridge: {{}}, state: {state}}}
  networks:
    - {{name: pod, pod: {{}}}}
""".encode()


@pytest.fixture
def pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, "lsp0", ("10.96.0.5", "10.96.0.1")):
        yield


def reachable(attempts: int) -> bool:
    for _ in range(attempts):
        done = sh("ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "1",
                  "http://10.96.0.5/", check=False, timeout=10)  # fmt: skip
        if done.returncode == 0 and "VL-HTTP-OK" in done.stdout:
            return True
        time.sleep(0.5)
    return False


def link_state(want: str) -> dict[str, Any]:
    for _ in range(20):
        done = sh("ip", "netns", "exec", POD, "curl", "-sS", "--max-time", "2",
                  f"http://127.0.0.1:{STATUS_PORT}/status", check=False)  # fmt: skip
        if done.returncode == 0:
            doc: dict[str, Any] = json.loads(done.stdout)
            if doc["interfaces"] and doc["interfaces"][0]["linkState"] == want:
                return doc
        time.sleep(0.5)
    raise AssertionError(f"/status never said linkState {want}")


def test_link_down_at_boot_then_up_then_down(pod: None, guest: GuestImage, tmp_path: Path) -> None:
    del pod
    spec_dir = tmp_path / "spec"
    atomic_write(spec_dir, {"vm.yaml": spec("down")})
    listen = f"127.0.0.1:{STATUS_PORT}"
    with start(tmp_path, guest, POD, spec_dir / "vm.yaml", listen=listen) as launcher:
        console = launcher.console
        ready = console.wait_for("READY", BOOT_TIMEOUT_S)
        assert ready.list_field("timeout") == ("eth0",), ready  # no lease without carrier
        assert [c.args for c in console.vl_lines("CARRIER")][-1] == ("eth0", "0")
        assert not console.vl_lines("LEASE4")
        assert link_state("down")["interfaces"][0]["name"] == "pod"
        assert not reachable(2)

        mark = console.mark()
        atomic_write(spec_dir, {"vm.yaml": spec("up")})
        console.wait_for("CARRIER", 20, where=lambda ln: ln.args == ("eth0", "1"), since=mark)
        console.wait_for("LEASE4", 30, where=lambda ln: ln.args[1:2] == ("10.96.0.5/24",))
        assert reachable(15)
        link_state("up")

        mark = console.mark()
        atomic_write(spec_dir, {"vm.yaml": spec("down")})
        console.wait_for("CARRIER", 20, where=lambda ln: ln.args == ("eth0", "0"), since=mark)
        link_state("down")
        assert not reachable(3)
    log = launcher.log()
    assert launcher.proc.returncode == 0, log[-3000:]
    assert log.count('"event":"link-state","interface":"pod"') == 2, log[-3000:]

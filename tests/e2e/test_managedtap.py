"""E2E: the managedtap binding: the guest gets its lease from the CNI's DHCP server.

``python -m launcher run`` boots the test guest in a simulated pod (``mt-pod-<pid>``,
eth0 10.97.0.5/24 behind the peer) with one ``binding: {name: managedtap}`` interface.
dnsmasq on the peer side plays the CNI's DHCP (Kube-OVN, OVN localnet): a static lease
10.97.0.5 for the pod interface's original MAC. Checked: the guest takes the pod MAC,
leases 10.97.0.5 from the peer's dnsmasq (server 10.97.0.1) through the launcher's
bridge, the launcher serves no DHCP itself, and the peer reaches the guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage
from testbed.harness import http_body, sh, simulated_pod
from testbed.launch import start

SUFFIX = os.getpid() % 100000
POD, PEER = f"mt-pod-{SUFFIX}", f"mt-peer-{SUFFIX}"
BOOT_TIMEOUT_S = 60.0

pytestmark = pytest.mark.timeout(150)

SPEC = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: mt-vm, namespace: e2e}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    memory: {guest: 256Mi}
    firmware:
      kernelBoot:
        container:
          image: localhost/mt-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1 vl.ready_timeout=30"
    devices:
      interfaces:
        - {name: pod, binding: {name: managedtap}}
  networks:
    - {name: pod, pod: {}}
"""


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[str]:
    """The pod, and dnsmasq on the peer side serving the pod MAC; yields that MAC."""
    with simulated_pod(POD, PEER, "mtp0", ("10.97.0.5", "10.97.0.1")):
        (eth0,) = json.loads(sh("ip", "-n", POD, "-j", "link", "show", "eth0").stdout)
        mac = eth0["address"]
        argv = [
            "ip", "netns", "exec", PEER, "dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--port=0", "--interface=mtp0", "--bind-interfaces",
            f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            "--dhcp-range=10.97.0.0,static,255.255.255.0,1h",
            "--dhcp-option=option:router,10.97.0.1",
            f"--dhcp-host={mac},10.97.0.5", "--log-dhcp",
            f"--log-facility={tmp_path / 'dnsmasq.log'}",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            yield mac
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_guest_leases_from_the_cnis_dhcp(pod: str, guest: GuestImage, tmp_path: Path) -> None:
    pod_mac = pod
    with start(tmp_path, guest, POD, SPEC) as launcher:
        lease = launcher.console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.97.0.5/24",)
        )
        assert lease.fields["server"] == "10.97.0.1", lease  # the peer's dnsmasq, not ours
        assert lease.fields["router"] == "10.97.0.1", lease
        assert "VL-HTTP-OK port=80" in http_body(PEER, "http://10.97.0.5/")
        assert pod_mac.lower() in (tmp_path / "dnsmasq.log").read_text().lower()
    log = launcher.log()
    assert launcher.proc.returncode == 0, log[-3000:]
    assert "DHCPv4 server" not in log  # the launcher served nothing

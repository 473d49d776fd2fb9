"""E2E: masquerade port ranges and hairpin with the real test guest under QEMU/TCG.

``python -m launcher run`` boots the test guest in a simulated dual-stack pod
(``mr-pod-<pid>``: eth0 10.95.0.5/24 + fd95::5/64 behind the peer) with one masquerade
interface forwarding ``portRanges: [{TCP, 8000-8100}]`` and no ``ports``. The guest
serves HTTP on 80 and 8080 (docs/guest.md). Checked: from the peer, 8080 (inside the
range) reaches the guest over IPv4 and IPv6 and 80 (outside) does not; from inside the
guest (``vl.probe``), the pod IP's 8080 reaches the guest itself (hairpin) over IPv4 and
IPv6. The pod netns turns br_netfilter off as docs/network.md "Hairpin" asks of pods on
nodes that load it (this machine does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage
from testbed.harness import http_body, sh, simulated_pod
from testbed.launch import start

SUFFIX = os.getpid() % 100000
POD, PEER = f"mr-pod-{SUFFIX}", f"mr-peer-{SUFFIX}"
BOOT_TIMEOUT_S = 60.0
PROBES = ("10.95.0.5:8080", "[fd95::5]:8080")

pytestmark = pytest.mark.timeout(150)

SPEC = f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: mr-vm, namespace: e2e}}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    memory: {{guest: 256Mi}}
    firmware:
      kernelBoot:
        container:
          image: localhost/mr-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1 vl.probe={",".join(PROBES)}"
    devices:
      interfaces:
        - name: pod
          masquerade: {{}}
          portRanges:
            - {{protocol: TCP, start: 8000, end: 8100}}
  networks:
    - {{name: pod, pod: {{}}}}
"""


@pytest.fixture
def pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, "mrp0", ("10.95.0.5", "10.95.0.1"), ("fd95::5", "fd95::1")):
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            if Path(f"/proc/sys/net/bridge/{key}").exists():  # the pod's declared sysctls
                sh("ip", "netns", "exec", POD, "sysctl", "-qw", f"net.bridge.{key}=0")
        yield


def test_port_range_and_hairpin(pod: None, guest: GuestImage, tmp_path: Path) -> None:
    del pod
    with start(tmp_path, guest, POD, SPEC) as launcher:
        launcher.console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.0.2.2/30",)
        )
        assert "VL-HTTP-OK port=8080" in http_body(PEER, "http://10.95.0.5:8080/")
        assert "VL-HTTP-OK port=8080" in http_body(PEER, "http://[fd95::5]:8080/")
        outside = sh("ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "2",
                     "http://10.95.0.5:80/", check=False, timeout=10)  # fmt: skip
        assert outside.returncode != 0, outside.stdout  # 80 is not in the range
        for target in PROBES:  # hairpin, from inside the guest
            probe = launcher.console.wait_for(
                "PROBE", 40, where=lambda ln, t=target: ln.args[:1] == (t,)
            )
            assert probe.fields["ok"] == "1", probe
            assert probe.fields["body"].startswith("VL-HTTP-OK_port=8080"), probe
    log = launcher.log()
    assert launcher.proc.returncode == 0, log[-3000:]
    assert "hairpin-blocked" not in log  # the pod's br_netfilter sysctls are off

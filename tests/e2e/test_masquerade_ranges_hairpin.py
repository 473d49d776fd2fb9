"""E2E: masquerade port ranges and hairpin with the real test guest under QEMU/TCG.

``python -m launcher run`` boots the test guest in a simulated dual-stack pod
(``mr-pod-<pid>``: eth0 10.95.0.5/24 + fd95::5/64 behind the peer) with one masquerade
interface forwarding ``portRanges: [{TCP, 8000-8100}]`` and no ``ports``. The guest
serves HTTP on 80 and 8080 (docs/guest.md). Checked: from the peer, 8080 (inside the
range) reaches the guest over IPv4 and IPv6 and 80 (outside) does not; from inside the
guest (``vl.probe``), the pod IP's 8080 reaches the guest itself (hairpin) over IPv4 and
IPv6, and so does a Service IP that lands back on this pod: the peer plays kube-proxy
(nftables DNAT of 10.96.95.10:8080 / [fd00:10:96::95:a]:8080 to the pod IP, and the
masquerade kube-proxy adds when a pod reaches itself through its Service), reached
through the pod's default route. The pod netns turns br_netfilter off as
docs/network.md "Hairpin" asks of pods on nodes that load it (this machine does).
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
SERVICE4, SERVICE6 = "10.96.95.10", "fd00:10:96::95:a"
PROBES = ("10.95.0.5:8080", "[fd95::5]:8080", f"{SERVICE4}:8080", f"[{SERVICE6}]:8080")
#: the peer as the node's kube-proxy: a ClusterIP Service (IPv4 + IPv6) on port 8080 whose
#: one endpoint is this pod, and the masquerade kube-proxy applies to hairpin traffic
#: (KUBE-MARK-MASQ when the source is the endpoint; without it the pod would see a packet
#: from its own address and drop it as a martian)
KUBE_PROXY = f"""\
table inet mr_kube_proxy {{
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {SERVICE4} tcp dport 8080 dnat ip to 10.95.0.5:8080
		ip6 daddr {SERVICE6} tcp dport 8080 dnat ip6 to [fd95::5]:8080
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.95.0.5 ip daddr 10.95.0.5 masquerade
		ip6 saddr fd95::5 ip6 daddr fd95::5 masquerade
	}}
}}
"""

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
def pod(tmp_path: Path) -> Iterator[None]:
    with simulated_pod(POD, PEER, "mrp0", ("10.95.0.5", "10.95.0.1"), ("fd95::5", "fd95::1")):
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            if Path(f"/proc/sys/net/bridge/{key}").exists():  # the pod's declared sysctls
                sh("ip", "netns", "exec", POD, "sysctl", "-qw", f"net.bridge.{key}=0")
        # the node: routes between pods and Services, kube-proxy's rules
        sh("ip", "netns", "exec", PEER, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")  # fmt: skip
        rules = tmp_path / "kube-proxy.nft"
        rules.write_text(KUBE_PROXY)
        sh("ip", "netns", "exec", PEER, "nft", "-f", str(rules))
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
        for target in PROBES:  # hairpin through the pod IP and the Service IP, from the guest
            probe = launcher.console.wait_for(
                "PROBE", 40, where=lambda ln, t=target: ln.args[:1] == (t,)
            )
            assert probe.fields["ok"] == "1", probe
            assert probe.fields["body"].startswith("VL-HTTP-OK_port=8080"), probe
    log = launcher.log()
    assert launcher.proc.returncode == 0, log[-3000:]
    assert "hairpin-blocked" not in log  # the pod's br_netfilter sysctls are off

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
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage
from testbed.guest.console import ConsoleReader
from testbed.harness import sh, simulated_pod

REPO = Path(__file__).resolve().parents[2]
SUFFIX = os.getpid() % 100000
POD, PEER = f"mr-pod-{SUFFIX}", f"mr-peer-{SUFFIX}"
BOOT_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
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


def curl(url: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", PEER, "curl", "-sS", "-g", "--max-time", "2", url,
              check=False, timeout=10)  # fmt: skip


def eventually(url: str) -> str:
    for _ in range(15):
        done = curl(url)
        if done.returncode == 0:
            return done.stdout
        time.sleep(1)
    return ""


def test_port_range_and_hairpin(pod: None, guest: GuestImage, tmp_path: Path) -> None:
    del pod
    kernel_dir = tmp_path / "volumes" / "kernel"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "vmlinuz").symlink_to(guest.kernel)
    (kernel_dir / "initrd.gz").symlink_to(guest.initrd)
    (tmp_path / "vm.yaml").write_text(SPEC)
    argv = [
        "ip", "netns", "exec", POD, sys.executable, "-m", "launcher", "run",
        "--spec", str(tmp_path / "vm.yaml"),
        "--state-dir", str(tmp_path / "state"),
        "--volumes-dir", str(tmp_path / "volumes"),
        "--termination-log", str(tmp_path / "termination-log"),
        "--accel", "tcg", "--vmm-user", "keep",
    ]  # fmt: skip
    stderr_path = tmp_path / "launcher.err"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(tmp_path / "console.log"))
    try:
        console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.0.2.2/30",)
        )
        assert "VL-HTTP-OK port=8080" in eventually("http://10.95.0.5:8080/")
        assert "VL-HTTP-OK port=8080" in eventually("http://[fd95::5]:8080/")
        outside = curl("http://10.95.0.5:80/")
        assert outside.returncode != 0, outside.stdout  # 80 is not in the range
        for target in PROBES:  # hairpin, from inside the guest
            probe = console.wait_for("PROBE", 40, where=lambda ln, t=target: ln.args[:1] == (t,))
            assert probe.fields["ok"] == "1", probe
            assert probe.fields["body"].startswith("VL-HTTP-OK_port=8080"), probe
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    log = stderr_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "hairpin-blocked" not in log  # the pod's br_netfilter sysctls are off

"""E2E: every NIC model the spec accepts either boots and gets a lease, or is refused;
the interface's MTU override (1400 under the pod link's 1500) reaches each model's guest.

For each model (docs/network.md "NIC models") ``python -m launcher run`` boots the
NIC-model test guest (Debian's generic kernel with the emulated NICs' drivers,
``testbed.guest.build.ensure_nic_guest``) under QEMU/TCG in a simulated pod
(``nm-pod-<pid>``, eth0 10.94.0.5/24 behind the peer 10.94.0.1) with one bridge-bound
interface of that model and ``mtu: 1400``. Checked: the guest's PCI bus shows exactly
that model's vendor:device, the guest leases the pod address on it through the model's
driver with MTU 1400 (DHCP option 26, applied by the guest), the peer reaches the guest's
HTTP server, a 1400-byte ping with DF answers and a 1401-byte one does not (the tap and
bridge carry 1400). A model the installed QEMU lacks (``igb``
before QEMU 8.0) must be refused by ``run`` with exit 2 naming field, model and
hypervisor, the pod's eth0 left as it was. One boot per model, short timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisor.qemu.devices import qemu_nic_models
from launcher.machine import QEMU_NIC_MODELS
from testbed.guest.build import GuestImage, ensure_nic_guest
from testbed.guest.console import ConsoleReader
from testbed.harness import sh, simulated_pod

REPO = Path(__file__).resolve().parents[2]
SUFFIX = os.getpid() % 100000
POD, PEER = f"nm-pod-{SUFFIX}", f"nm-peer-{SUFFIX}"
BOOT_TIMEOUT_S = 60.0
MTU = 1400
EXIT_TIMEOUT_S = 30.0
#: the PCI vendor:device QEMU gives each model (virtio: the modern virtio-net id)
PCI_IDS = {
    "virtio": ("1af4:1041", "1af4:1000"),
    "e1000": ("8086:100e",),
    "e1000e": ("8086:10d3",),
    "igb": ("8086:10c9",),
    "rtl8139": ("10ec:8139",),
    "ne2k_pci": ("10ec:8029",),
    "pcnet": ("1022:2000",),
}

pytestmark = pytest.mark.timeout(120)


def spec(model: str) -> str:
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: nm-vm, namespace: e2e}}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    memory: {{guest: 256Mi}}
    firmware:
      kernelBoot:
        container:
          image: localhost/nm-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1 vl.ready_timeout=30"
    devices:
      interfaces:
        - {{name: pod, bridge: {{}}, model: {model}, mtu: {MTU}}}
  networks:
    - {{name: pod, pod: {{}}}}
"""


@pytest.fixture(scope="module")
def nic_guest() -> GuestImage:
    return ensure_nic_guest()


@pytest.fixture
def pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, "nmp0", ("10.94.0.5", "10.94.0.1")):
        yield


def launcher(tmp_path: Path, model: str, guest: GuestImage) -> subprocess.Popen[bytes]:
    kernel_dir = tmp_path / "volumes" / "kernel"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "vmlinuz").symlink_to(guest.kernel)
    (kernel_dir / "initrd.gz").symlink_to(guest.initrd)
    (tmp_path / "vm.yaml").write_text(spec(model))
    argv = [
        "ip", "netns", "exec", POD, sys.executable, "-m", "launcher", "run",
        "--spec", str(tmp_path / "vm.yaml"),
        "--state-dir", str(tmp_path / "state"),
        "--volumes-dir", str(tmp_path / "volumes"),
        "--termination-log", str(tmp_path / "termination-log"),
        "--accel", "tcg", "--vmm-user", "keep",
        "--status-listen", "127.0.0.1:18790",
    ]  # fmt: skip
    with open(tmp_path / "launcher.err", "wb") as err:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO)


def ping(size: int) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", PEER, "ping", "-c", "1", "-W", "2", "-M", "do",
              "-s", str(size), "10.94.0.5", check=False, timeout=10)  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("model", QEMU_NIC_MODELS)
def test_model_boots_and_leases_or_is_refused(
    model: str, pod: None, nic_guest: GuestImage, tmp_path: Path
) -> None:
    del pod
    available = qemu_nic_models("qemu-system-x86_64")
    proc = launcher(tmp_path, model, nic_guest)
    assert proc.stdout is not None
    if model not in available:
        proc.communicate(timeout=EXIT_TIMEOUT_S)
        err = (tmp_path / "launcher.err").read_text()
        assert proc.returncode == 2, err[-2000:]
        assert (
            f'spec.domain.devices.interfaces[0].model: "{model}" is not supported by qemu: '
            f"the installed QEMU has no {model} device"
        ) in err
        (eth0,) = json.loads(sh("ip", "-n", POD, "-j", "addr", "show", "eth0").stdout)
        assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == ["10.94.0.5"]
        return
    console = ConsoleReader(proc.stdout, log_path=str(tmp_path / "console.log"))
    try:
        lease = console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.94.0.5/24",)
        )
        assert lease.fields["router"] == "10.94.0.1", lease
        assert lease.fields["mtu"] == str(MTU), lease
        ids = {ln.args[1] for ln in console.vl_lines("PCI")}
        assert ids & set(PCI_IDS[model]), (model, sorted(ids))
        others = {i for m, v in PCI_IDS.items() if m != model for i in v}
        assert not ids & others, (model, sorted(ids))  # no other NIC model on the bus
        body = ""
        for _ in range(10):
            done = sh("ip", "netns", "exec", PEER, "curl", "-sS", "--max-time", "2",
                      "http://10.94.0.5/", check=False, timeout=10)  # fmt: skip
            if done.returncode == 0:
                body = done.stdout
                break
            time.sleep(0.5)
        assert "VL-HTTP-OK port=80" in body
        fits = ping(MTU - 28)  # 20 bytes IPv4 + 8 ICMP
        assert fits.returncode == 0, fits.stdout + fits.stderr
        assert ping(MTU - 27).returncode != 0  # one byte over: dropped at the tap/bridge
    finally:
        stop(proc)
    assert proc.returncode == 0, (tmp_path / "launcher.err").read_text()[-3000:]

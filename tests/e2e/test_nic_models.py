"""E2E: every NIC model the spec accepts either boots and gets a lease, or is refused;
the interface's MTU override (1400 under the pod link's 1500) reaches each model's guest.

For each model (docs/network.md "NIC models") ``python -m launcher run`` boots the
NIC-model test guest (Debian's generic kernel with the emulated NICs' drivers,
``testbed.guest.build.ensure_nic_guest``) under QEMU/TCG in a simulated pod
(``nm-pod-<pid>``, eth0 10.94.0.5/24 behind the peer 10.94.0.1) with one bridge-bound
interface of that model and ``mtu: 1400``. Checked: the guest's PCI bus shows exactly
that model's vendor:device, the guest leases the pod address on it through the model's
driver with MTU 1400 (DHCP option 26, applied by the guest), the guest's IPv6 MTU is
1400 (the router advertisement's MTU option: with ``vl.mtu6=1280`` the guest starts each
NIC's IPv6 MTU at 1280 and only the RA raises it; this proves the RA's option for virtio,
whose link MTU is 1400 from ``host_mtu`` before DHCP; for the other models DHCPv4 changes
the link MTU 1500 → 1400, which also sets the IPv6 MTU), the peer reaches the guest's
HTTP server, a 1400-byte ping with DF answers and a 1401-byte one does not (the tap and
bridge carry 1400). The pod is dual-stack (fd94::5/64). A model the installed QEMU lacks (``igb``
before QEMU 8.0) must be refused by ``run`` with exit 2 naming field, model and
hypervisor, the pod's eth0 left as it was. One boot per model, short timeouts.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisor.qemu.devices import qemu_nic_models
from launcher.machine import QEMU_NIC_MODELS
from testbed.guest.build import GuestImage, ensure_nic_guest
from testbed.harness import http_body, sh, simulated_pod
from testbed.launch import start

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
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1 vl.ready_timeout=30 vl.mtu6=1280"
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
    with simulated_pod(POD, PEER, "nmp0", ("10.94.0.5", "10.94.0.1"), ("fd94::5", "fd94::1")):
        yield


def ping(size: int) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", PEER, "ping", "-c", "1", "-W", "2", "-M", "do",
              "-s", str(size), "10.94.0.5", check=False, timeout=10)  # fmt: skip


@pytest.mark.parametrize("model", QEMU_NIC_MODELS)
def test_model_boots_and_leases_or_is_refused(
    model: str, pod: None, nic_guest: GuestImage, tmp_path: Path
) -> None:
    del pod
    available = qemu_nic_models("qemu-system-x86_64")
    with start(tmp_path, nic_guest, POD, spec(model), listen="127.0.0.1:18790") as launcher:
        if model not in available:
            code = launcher.wait(EXIT_TIMEOUT_S)
            err = launcher.log()
            assert code == 2, err[-2000:]
            assert (
                f'spec.domain.devices.interfaces[0].model: "{model}" is not supported by qemu: '
                f"the installed QEMU has no {model} device"
            ) in err
            (eth0,) = json.loads(sh("ip", "-n", POD, "-j", "addr", "show", "eth0").stdout)
            inet = [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"]
            assert inet == ["10.94.0.5"]
            return
        lease = launcher.console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.94.0.5/24",)
        )
        assert lease.fields["router"] == "10.94.0.1", lease
        assert lease.fields["mtu"] == str(MTU), lease
        # the router advertisement's MTU option (vl.mtu6=1280 until an RA raises it)
        launcher.console.wait_for(
            "MTU",
            BOOT_TIMEOUT_S,
            where=lambda ln: (
                ln.args[:1] == ("eth0",) and ln.fields == {"link": str(MTU), "ipv6": str(MTU)}
            ),
        )
        ids = {ln.args[1] for ln in launcher.console.vl_lines("PCI")}
        assert ids & set(PCI_IDS[model]), (model, sorted(ids))
        others = {i for m, v in PCI_IDS.items() if m != model for i in v}
        assert not ids & others, (model, sorted(ids))  # no other NIC model on the bus
        assert "VL-HTTP-OK port=80" in http_body(PEER, "http://10.94.0.5/", attempts=10)
        fits = ping(MTU - 28)  # 20 bytes IPv4 + 8 ICMP
        assert fits.returncode == 0, fits.stdout + fits.stderr
        assert ping(MTU - 27).returncode != 0  # one byte over: dropped at the tap/bridge
    assert launcher.proc.returncode == 0, launcher.log()[-3000:]

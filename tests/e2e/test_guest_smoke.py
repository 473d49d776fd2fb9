"""E2E smoke test of the tiny test guest the other e2e tests and benchmarks boot.

Boots testbed/guest's kernel + initramfs with real qemu-system-x86_64 (TCG here, vhost off)
on a tap joined to a bridge inside a network namespace this test creates (``gu-pod-*``),
with dnsmasq as the DHCPv4 / DHCPv6 / router-advertisement peer, and checks the guest's
VL-* console protocol end to end: leases configured, HTTP answering on ports 80 and 8080
over IPv4 and IPv6, a stable RA default route, a Calico-style /32 lease with option 121,
NIC hot plug and unplug, a cloud-init NoCloud ISO, and QMP ``system_powerdown`` ending in
a clean, bounded power-off.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage
from testbed.harness import (
    PodNet,
    boot,
    cidata_iso,
    dnsmasq,
    http_get,
    pod_netns,
    powerdown,
    qmp,
)

NS = f"gu-pod-{os.getpid() % 100000}"
MACS = ("52:54:00:67:75:01", "52:54:00:67:75:02")
GW4 = "10.77.0.1"
GUEST4 = ("10.77.0.5", "10.77.0.6")
GW6 = "fd77::1"
GUEST6 = ("fd77::5", "fd77::6")
HOSTNAME = "gu-guest"
MTU = 1400

BOOT_TIMEOUT_S = 90.0  # TCG on 2 shared cores; a lease normally takes about 6 s
POWEROFF_TIMEOUT_S = 30.0

# Generous: the first test may include a cold guest build (up to ~4 min under load).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[PodNet]:
    """The pod netns with its bridge and taps, and dnsmasq serving both guest MACs."""
    with pod_netns(NS, gateway4=f"{GW4}/24", gateway6=f"{GW6}/64") as pod:
        hosts = list(zip(MACS, GUEST4, GUEST6, strict=True))
        with dnsmasq(pod, tmp_path, hosts, hostname=HOSTNAME, mtu=MTU, search="gu.test"):
            yield pod


def test_guest_gets_leases_serves_http_and_powers_off(
    guest: GuestImage, net: PodNet, tmp_path: Path
) -> None:
    with boot(guest, net, tmp_path, MACS[:1]) as vm:
        lease4 = vm.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
        lease4_wall = lease4.host_time - vm.started
        assert lease4.args == ("eth0", f"{GUEST4[0]}/24")
        assert lease4.fields["event"] == "bound"
        assert lease4.list_field("router") == (GW4,)
        assert lease4.list_field("dns") == (GW4,)
        assert lease4.fields["mtu"] == str(MTU)
        assert lease4.fields["hostname"] == HOSTNAME
        assert lease4.fields["server"] == GW4
        assert lease4.fields["lease"] == "3600"

        lease6 = vm.console.wait_for("LEASE6", BOOT_TIMEOUT_S)
        # Canonical RFC 5952 text (the guest compresses udhcpc6's full form).
        assert lease6.args == ("eth0", f"{GUEST6[0]}/128")
        assert lease6.fields["lease"] == "3600"  # patched byte order (docs/guest.md)
        assert lease6.list_field("dns") == (GW6,)
        assert lease6.fields["search"] == "gu.test"

        ready = vm.console.wait_for("READY", BOOT_TIMEOUT_S)
        assert ready.list_field("nics") == ("eth0",)
        assert "timeout" not in ready.fields
        assert float(ready.fields["t"]) >= float(lease4.fields["t"])

        # The IPv6 default route comes from dnsmasq's router advertisement.
        routes = vm.console.wait_for(
            "ROUTES", BOOT_TIMEOUT_S, where=lambda r: r.fields["default6"] != ""
        )
        assert routes.fields["default4"] == f"{GW4}@eth0"
        via6, _, dev6 = routes.fields["default6"].partition("@")
        assert ipaddress.ip_address(via6).is_link_local
        assert dev6 == "eth0"
        vm.console.wait_for(
            "ADDRS",
            BOOT_TIMEOUT_S,
            where=lambda a: (
                a.args[0] == "eth0" and {f"{GUEST4[0]}/24", f"{GUEST6[0]}/128"} <= set(a.args[1:])
            ),
        )

        page = http_get(net.netns, f"http://{GUEST4[0]}/")
        assert page.strip() == f"VL-HTTP-OK port=80 hostname={HOSTNAME}"
        page = http_get(net.netns, f"http://{GUEST4[0]}:8080/")
        assert page.strip() == f"VL-HTTP-OK port=8080 hostname={HOSTNAME}"
        page = http_get(net.netns, f"http://[{GUEST6[0]}]/")
        assert page.strip() == f"VL-HTTP-OK port=80 hostname={HOSTNAME}"
        page = http_get(net.netns, f"http://[{GUEST6[0]}]:8080/")
        assert page.strip() == f"VL-HTTP-OK port=8080 hostname={HOSTNAME}"

        # The RA default route must not flap (it did while the RA sender was no router):
        # watch a bounded 10 s window past the first route for a ROUTES line without it.
        time.sleep(10)
        flaps = [
            r.raw
            for r in vm.console.vl_lines("ROUTES")
            if r.host_time > routes.host_time and r.fields["default6"] == ""
        ]
        assert flaps == []

        button, exited = powerdown(vm, POWEROFF_TIMEOUT_S)
        assert float(button.fields["t"]) > float(lease4.fields["t"])
        print(
            f"guest boot: lease4 at guest t={lease4.fields['t']} s, "
            f"host {lease4_wall:.2f} s after QEMU start; "
            f"lease6 guest t={lease6.fields['t']} s; ready guest t={ready.fields['t']} s; "
            f"power button -> QEMU exit {exited:.2f} s"
        )


def test_guest_hot_plugged_nic_gets_its_lease(
    guest: GuestImage, net: PodNet, tmp_path: Path
) -> None:
    with boot(guest, net, tmp_path, MACS[:1]) as vm:
        vm.console.wait_for("READY", BOOT_TIMEOUT_S)
        mark = vm.console.mark()
        netdev = {
            "type": "tap",
            "id": "n1",
            "ifname": net.taps[1],
            "script": "no",
            "downscript": "no",
            "vhost": False,
        }
        nic = {"driver": "virtio-net-pci", "id": "nic1", "netdev": "n1", "mac": MACS[1]}
        qmp(vm, ("netdev_add", netdev), ("device_add", {**nic, "bus": "rp1"}))
        added = vm.console.wait_for("NIC-ADDED", BOOT_TIMEOUT_S, since=mark)
        assert added.args == ("eth1",)
        lease = vm.console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, since=mark, where=lambda x: x.args[:1] == ("eth1",)
        )
        assert lease.args == ("eth1", f"{GUEST4[1]}/24")
        page = http_get(net.netns, f"http://{GUEST4[1]}/")
        assert page.startswith("VL-HTTP-OK port=80")

        mark = vm.console.mark()
        qmp(vm, ("device_del", {"id": "nic1"}))
        removed = vm.console.wait_for("NIC-REMOVED", BOOT_TIMEOUT_S, since=mark)
        assert removed.args == ("eth1",)
        powerdown(vm, POWEROFF_TIMEOUT_S)


def test_guest_reports_cidata_iso(guest: GuestImage, net: PodNet, tmp_path: Path) -> None:
    files = {
        "meta-data": b"instance-id: gu-1\nlocal-hostname: gu-guest\n",
        "user-data": b"#cloud-config\n{}\n",
        "network-config": b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
    }
    iso = tmp_path / "cidata.iso"
    cidata_iso(iso, files)
    drive = f"file={iso},if=virtio,format=raw,readonly=on"
    with boot(guest, net, tmp_path, MACS[:1], extra=("-drive", drive)) as vm:
        vm.console.wait_for("READY", BOOT_TIMEOUT_S)
        device = vm.console.wait_for("CIDATA-DEVICE", 1)
        assert device.args == ("vda",)
        reported = {line.args[0]: line.args[1] for line in vm.console.vl_lines("CIDATA")}
        assert reported == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        text = vm.console.text().splitlines()
        begin = next(i for i, t in enumerate(text) if "VL-CIDATA-NETWORK-CONFIG-BEGIN" in t)
        end = next(i for i, t in enumerate(text) if "VL-CIDATA-NETWORK-CONFIG-END" in t)
        assert "\n".join(text[begin + 1 : end]) + "\n" == files["network-config"].decode()
        powerdown(vm, POWEROFF_TIMEOUT_S)


def test_guest_handles_calico_style_slash32_lease(guest: GuestImage, tmp_path: Path) -> None:
    """A /32 lease whose gateway is only reachable through option 121's on-link route.

    Like a Calico pod: 169.254.1.1/32 on-link first, then the default route via it; the
    router option must be ignored (RFC 3442) and the guest still reachable."""
    calico_gw = "169.254.1.1"
    with pod_netns(NS, gateway4=f"{GW4}/24", gateway6=f"{GW6}/64") as pod:
        subprocess.run(
            ["ip", "-n", pod.netns, "addr", "add", f"{calico_gw}/32", "dev", pod.bridge],
            check=True,
            timeout=10,
        )
        options = (
            "--dhcp-option=1,255.255.255.255",
            f"--dhcp-option=121,{calico_gw}/32,0.0.0.0,0.0.0.0/0,{calico_gw}",
        )
        hosts = [(MACS[0], GUEST4[0], GUEST6[0])]
        with (
            dnsmasq(pod, tmp_path, hosts, hostname=HOSTNAME, options=options),
            boot(guest, pod, tmp_path, MACS[:1]) as vm,
        ):
            lease = vm.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
            assert lease.args == ("eth0", f"{GUEST4[0]}/32")
            assert lease.list_field("routes") == (
                f"{calico_gw}/32>0.0.0.0",
                f"0.0.0.0/0>{calico_gw}",
            )
            routes = vm.console.wait_for(
                "ROUTES", BOOT_TIMEOUT_S, where=lambda r: r.fields["default4"] != ""
            )
            assert routes.fields["default4"] == f"{calico_gw}@eth0"
            page = http_get(pod.netns, f"http://{GUEST4[0]}/")
            assert page.strip() == f"VL-HTTP-OK port=80 hostname={HOSTNAME}"
            powerdown(vm, POWEROFF_TIMEOUT_S)

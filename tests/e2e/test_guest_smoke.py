"""E2E smoke test of the tiny test guest the other e2e tests and benchmarks boot.

Boots tests/guest's kernel + initramfs with real qemu-system-x86_64 (TCG here, vhost off)
on a tap joined to a bridge inside a network namespace this test creates (``gu-pod-*``),
with dnsmasq as the DHCPv4 / DHCPv6 / router-advertisement peer, and checks the guest's
VL-* console protocol end to end: leases configured, HTTP answering on ports 80 and 8080
over IPv4 and IPv6, NIC hot plug, a cloud-init NoCloud ISO, and QMP ``system_powerdown``
ending in a clean, bounded power-off.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import pytest
from qemu.qmp import QMPClient

from tests.guest.build import GuestImage, ensure_guest
from tests.guest.console import ConsoleReader, VlLine

NS = f"gu-pod-{os.getpid() % 100000}"
BRIDGE = "gubr0"
TAPS = ("gutap0", "gutap1")
MACS = ("52:54:00:67:75:01", "52:54:00:67:75:02")
GW4 = "10.77.0.1"
GUEST4 = ("10.77.0.5", "10.77.0.6")
GW6 = "fd77::1"
GUEST6 = ("fd77::5", "fd77::6")
HOSTNAME = "gu-guest"
MTU = "1400"

BOOT_TIMEOUT_S = 90.0  # TCG on 2 shared cores; a lease normally takes about 5 s
POWEROFF_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(300)


def _run(*argv: str, timeout: float = 20.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    return ensure_guest()


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """A netns with bridge gubr0 (10.77.0.1/24, fd77::1/64) and taps gutap0/gutap1 on it."""
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10, check=False)
    _run("ip", "netns", "add", NS)
    try:
        _run("ip", "-n", NS, "link", "set", "lo", "up")
        # The RA sender must also answer neighbour solicitations as a router: a Neighbor
        # Advertisement without the R flag makes the guest drop its RA default route
        # (RFC 4861 7.2.5), so it would flap every RA interval.
        _run("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        _run("ip", "-n", NS, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0")
        _run("ip", "-n", NS, "addr", "add", f"{GW4}/24", "dev", BRIDGE)
        _run("ip", "-n", NS, "addr", "add", f"{GW6}/64", "dev", BRIDGE, "nodad")
        for tap in TAPS:
            _run("ip", "-n", NS, "tuntap", "add", "dev", tap, "mode", "tap")
            _run("ip", "-n", NS, "link", "set", tap, "master", BRIDGE, "up")
        _run("ip", "-n", NS, "link", "set", BRIDGE, "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10, check=False)


@pytest.fixture
def dnsmasq(pod_netns: str, tmp_path: Path) -> Iterator[None]:
    """dnsmasq in the netns: static v4 and v6 leases per guest MAC, RA with the M flag."""
    argv = [
        "ip", "netns", "exec", pod_netns, "dnsmasq", "--keep-in-foreground",
        "--conf-file=/dev/null", "--port=0", f"--interface={BRIDGE}", "--bind-interfaces",
        f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'pid'}",
        "--dhcp-range=10.77.0.0,static,255.255.255.0,1h",
        "--dhcp-range=fd77::,static,64,1h",
        "--enable-ra",
        f"--dhcp-option=option:router,{GW4}",
        f"--dhcp-option=option:dns-server,{GW4}",
        f"--dhcp-option=option:mtu,{MTU}",
        f"--dhcp-option=option6:dns-server,[{GW6}]",
        "--dhcp-option=option6:domain-search,gu.test",
        "--log-dhcp", f"--log-facility={tmp_path / 'dnsmasq.log'}",
    ]  # fmt: skip
    for mac, v4, v6 in zip(MACS, GUEST4, GUEST6, strict=True):
        argv.append(f"--dhcp-host={mac},{v4},[{v6}],{HOSTNAME}")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"dnsmasq exited with {proc.returncode}: {err.strip()}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass(frozen=True, slots=True)
class Vm:
    proc: subprocess.Popen[bytes]
    console: ConsoleReader
    qmp_path: Path
    started: float


async def _qmp(path: Path, *commands: tuple[str, dict[str, object]]) -> None:
    client = QMPClient("gu-e2e")
    await asyncio.wait_for(client.connect(str(path)), timeout=10)
    try:
        for name, args in commands:
            await asyncio.wait_for(client.execute(name, args or None), timeout=10)
    finally:
        await asyncio.wait_for(client.disconnect(), timeout=10)


def qmp(vm: Vm, *commands: tuple[str, dict[str, object]]) -> None:
    asyncio.run(_qmp(vm.qmp_path, *commands))


@contextmanager
def boot(image: GuestImage, netns: str, tmp_path: Path, *extra: str, nics: int = 1) -> Iterator[Vm]:
    qmp_path = tmp_path / "qmp.sock"
    argv = [
        "ip", "netns", "exec", netns,
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "256",
        "-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"{image.cmdline} vl.ready_timeout=60",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
        "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2",
    ]  # fmt: skip
    for i in range(nics):
        argv += [
            "-netdev", f"tap,id=n{i},ifname={TAPS[i]},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev=n{i},mac={MACS[i]}",
        ]  # fmt: skip
    argv += list(extra)
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(tmp_path / "console.log"))
    try:
        yield Vm(proc, console, qmp_path, started)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        console.wait_closed(5)


def http_get(netns: str, url: str, attempts: int = 10) -> str:
    """GET from inside the netns with curl, retried a bounded number of times."""
    last = ""
    for _ in range(attempts):
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "curl", "-sS", "-g", "-m", "3", url],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout
        last = done.stderr.strip()
        time.sleep(0.5)
    raise AssertionError(f"GET {url} from {netns} failed {attempts} times: {last}")


def powerdown(vm: Vm) -> VlLine:
    mark = vm.console.mark()
    qmp(vm, ("system_powerdown", {}))
    line = vm.console.wait_for("POWER-BUTTON", POWEROFF_TIMEOUT_S, since=mark)
    try:
        rc = vm.proc.wait(timeout=POWEROFF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"QEMU still running {POWEROFF_TIMEOUT_S:.0f} s after the power button")
    assert rc == 0, vm.console.text()
    vm.console.wait_for("POWEROFF", 5, since=mark)
    return line


def test_guest_gets_leases_serves_http_and_powers_off(
    guest_image: GuestImage, pod_netns: str, dnsmasq: None, tmp_path: Path
) -> None:
    with boot(guest_image, pod_netns, tmp_path) as vm:
        lease4 = vm.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
        lease4_wall = lease4.host_time - vm.started
        assert lease4.args == ("eth0", f"{GUEST4[0]}/24")
        assert lease4.fields["event"] == "bound"
        assert lease4.list_field("router") == (GW4,)
        assert lease4.list_field("dns") == (GW4,)
        assert lease4.fields["mtu"] == MTU
        assert lease4.fields["hostname"] == HOSTNAME
        assert lease4.fields["server"] == GW4

        lease6 = vm.console.wait_for("LEASE6", BOOT_TIMEOUT_S)
        assert lease6.args[0] == "eth0"
        assert ipaddress.ip_interface(lease6.args[1]) == ipaddress.ip_interface(f"{GUEST6[0]}/128")
        assert [ipaddress.ip_address(d) for d in lease6.list_field("dns")] == [
            ipaddress.ip_address(GW6)
        ]
        assert lease6.fields["search"] == "gu.test"

        ready = vm.console.wait_for("READY", BOOT_TIMEOUT_S)
        assert ready.list_field("nics") == ("eth0",)
        assert "timeout" not in ready.fields

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
            where=lambda a: a.args[0] == "eth0" and f"{GUEST4[0]}/24" in a.args[1:],
        )

        page = http_get(pod_netns, f"http://{GUEST4[0]}/")
        assert page.strip() == f"VL-HTTP-OK port=80 hostname={HOSTNAME}"
        page = http_get(pod_netns, f"http://{GUEST4[0]}:8080/")
        assert page.strip() == f"VL-HTTP-OK port=8080 hostname={HOSTNAME}"
        page = http_get(pod_netns, f"http://[{GUEST6[0]}]/")
        assert page.strip() == f"VL-HTTP-OK port=80 hostname={HOSTNAME}"

        button = powerdown(vm)
        assert float(button.fields["t"]) > float(lease4.fields["t"])
        print(
            f"guest boot: lease4 at guest t={lease4.fields['t']} s, "
            f"host {lease4_wall:.2f} s after QEMU start; "
            f"lease6 guest t={lease6.fields['t']} s; ready guest t={ready.fields['t']} s"
        )


def test_guest_hot_plugged_nic_gets_its_lease(
    guest_image: GuestImage, pod_netns: str, dnsmasq: None, tmp_path: Path
) -> None:
    with boot(guest_image, pod_netns, tmp_path) as vm:
        vm.console.wait_for("READY", BOOT_TIMEOUT_S)
        mark = vm.console.mark()
        qmp(
            vm,
            (
                "netdev_add",
                {
                    "type": "tap",
                    "id": "n1",
                    "ifname": TAPS[1],
                    "script": "no",
                    "downscript": "no",
                    "vhost": False,
                },
            ),
            ("device_add", {"driver": "virtio-net-pci", "id": "nic1", "netdev": "n1",
                            "mac": MACS[1], "bus": "rp1"}),
        )  # fmt: skip
        added = vm.console.wait_for("NIC-ADDED", BOOT_TIMEOUT_S, since=mark)
        assert added.args == ("eth1",)
        lease = vm.console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, since=mark, where=lambda x: x.args[:1] == ("eth1",)
        )
        assert lease.args == ("eth1", f"{GUEST4[1]}/24")
        page = http_get(pod_netns, f"http://{GUEST4[1]}/")
        assert page.startswith("VL-HTTP-OK port=80")

        mark = vm.console.mark()
        qmp(vm, ("device_del", {"id": "nic1"}))
        removed = vm.console.wait_for("NIC-REMOVED", BOOT_TIMEOUT_S, since=mark)
        assert removed.args == ("eth1",)
        powerdown(vm)


def _cidata_iso(path: Path, files: dict[str, bytes]) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for i, (name, data) in enumerate(sorted(files.items())):
        iso_name = f"/F{i}.;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()


def test_guest_reports_cidata_iso(
    guest_image: GuestImage, pod_netns: str, dnsmasq: None, tmp_path: Path
) -> None:
    files = {
        "meta-data": b"instance-id: gu-1\nlocal-hostname: gu-guest\n",
        "user-data": b"#cloud-config\n{}\n",
        "network-config": b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
    }
    iso = tmp_path / "cidata.iso"
    _cidata_iso(iso, files)
    drive = f"file={iso},if=virtio,format=raw,readonly=on"
    with boot(guest_image, pod_netns, tmp_path, "-drive", drive) as vm:
        vm.console.wait_for("READY", BOOT_TIMEOUT_S)
        reported = {line.args[0]: line.args[1] for line in vm.console.vl_lines("CIDATA")}
        assert reported == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        text = vm.console.text().splitlines()
        begin = next(i for i, t in enumerate(text) if "VL-CIDATA-NETWORK-CONFIG-BEGIN" in t)
        end = next(i for i, t in enumerate(text) if "VL-CIDATA-NETWORK-CONFIG-END" in t)
        assert "\n".join(text[begin + 1 : end]) + "\n" == files["network-config"].decode()
        powerdown(vm)

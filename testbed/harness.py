"""Boots the test guest in a throwaway pod-like netns: the harness e2e tests and benches share.

``simulated_pod()`` makes a pod netns whose ``eth0`` is wired by veth to a peer netns, as a
CNI leaves it (the e2e tests run ``virt-launcher run`` in it); ``pod_netns()`` makes a netns
with a bridge and taps, ``dnsmasq()`` runs the DHCPv4 /
DHCPv6 / RA peer in it, ``boot()`` starts qemu-system-x86_64 (TCG, vhost off) on those taps
with a ``ConsoleReader`` on its serial console and a QMP socket (``boot_disk()`` the same
from a disk through SeaBIOS, for the Debian guest), and ``powerdown()`` drives
the ACPI power button and waits, bounded, for the guest's clean exit. Every process and
namespace is removed on exit; every wait has a timeout. Used by
tests/e2e/test_guest_smoke.py and bench/guest_boot.py; see docs/guest.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pycdlib
from qemu.qmp import QMPClient

from testbed.guest.build import GuestImage
from testbed.guest.console import ConsoleReader, VlLine

__all__ = [
    "sh",
    "simulated_pod",
    "veth",
    "PodNet",
    "Vm",
    "pod_netns",
    "dnsmasq",
    "boot",
    "boot_disk",
    "qmp",
    "powerdown",
    "http_get",
    "http_body",
    "cidata_iso",
    "HarnessError",
]

QMP_TIMEOUT_S = 10.0


class HarnessError(AssertionError):
    """A host-side step of the harness failed (an assertion failure in tests)."""


@dataclass(frozen=True, slots=True)
class PodNet:
    """The netns a guest is wired into: bridge with gateway addresses, one tap per NIC."""

    netns: str
    bridge: str
    taps: tuple[str, ...]
    gateway4: str  # address/prefix on the bridge, e.g. 10.77.0.1/24
    gateway6: str  # e.g. fd77::1/64


@dataclass(frozen=True, slots=True)
class Vm:
    """A running QEMU guest."""

    proc: subprocess.Popen[bytes]
    console: ConsoleReader
    qmp_path: Path
    started: float  # time.monotonic() just before QEMU was spawned


def _run(*argv: str, timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise HarnessError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from err
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def sh(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (bounded); with ``check`` a non-zero exit fails the test with stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def veth(pod: str, pod_if: str, peer_ns: str, peer_if: str, mac: str | None = None) -> None:
    """A veth from ``pod_if`` in netns ``pod`` to ``peer_if`` in ``peer_ns``, both up."""
    sh("ip", "-n", pod, "link", "add", pod_if, *(["address", mac] if mac else []),
       "type", "veth", "peer", "name", peer_if, "netns", peer_ns)  # fmt: skip
    sh("ip", "-n", pod, "link", "set", pod_if, "up")
    sh("ip", "-n", peer_ns, "link", "set", peer_if, "up")


@contextmanager
def simulated_pod(
    pod: str,
    peer: str,
    peer_if: str,
    v4: tuple[str, str],
    v6: tuple[str, str] | None = None,
    *,
    prefix4: int = 24,
    others: Sequence[str] = (),
    pod_if: str = "eth0",
) -> Iterator[None]:
    """Netns ``pod`` with ``pod_if`` (eth0) as a CNI leaves it, wired by veth to ``peer_if``
    in ``peer``.

    ``v4``/``v6`` are (pod address, peer address); the peer is the pod's default gateway.
    ``others`` are extra empty namespaces (secondary networks' peers). All are removed on exit.
    """
    names = (pod, peer, *others)
    for ns in names:
        sh("ip", "netns", "del", ns, check=False)
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        veth(pod, pod_if, peer, peer_if)
        sh("ip", "-n", pod, "addr", "add", f"{v4[0]}/{prefix4}", "dev", pod_if)
        sh("ip", "-n", peer, "addr", "add", f"{v4[1]}/{prefix4}", "dev", peer_if)
        sh("ip", "-n", pod, "route", "add", "default", "via", v4[1])
        if v6 is not None:
            sh("ip", "-n", pod, "addr", "add", f"{v6[0]}/64", "dev", pod_if, "nodad")
            sh("ip", "-n", peer, "addr", "add", f"{v6[1]}/64", "dev", peer_if, "nodad")
            sh("ip", "-n", pod, "-6", "route", "add", "default", "via", v6[1])
        yield
    finally:
        for ns in names:
            sh("ip", "netns", "del", ns, check=False)


@contextmanager
def pod_netns(
    netns: str,
    *,
    bridge: str = "gubr0",
    taps: Sequence[str] = ("gutap0", "gutap1"),
    gateway4: str = "10.77.0.1/24",
    gateway6: str = "fd77::1/64",
) -> Iterator[PodNet]:
    """A fresh netns with ``bridge`` (both gateway addresses) and ``taps`` enslaved to it."""
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10, check=False)
    _run("ip", "netns", "add", netns)
    try:
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        # The RA sender must also answer neighbour solicitations as a router: a Neighbor
        # Advertisement without the R flag makes the guest drop its RA default route
        # (RFC 4861 7.2.5), so the route would flap every RA interval.
        _run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        _run("ip", "-n", netns, "link", "add", bridge, "type", "bridge", "stp_state", "0")
        _run("ip", "-n", netns, "addr", "add", gateway4, "dev", bridge)
        _run("ip", "-n", netns, "addr", "add", gateway6, "dev", bridge, "nodad")
        for tap in taps:
            _run("ip", "-n", netns, "tuntap", "add", "dev", tap, "mode", "tap")
            _run("ip", "-n", netns, "link", "set", tap, "master", bridge, "up")
        _run("ip", "-n", netns, "link", "set", bridge, "up")
        yield PodNet(netns, bridge, tuple(taps), gateway4, gateway6)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10, check=False)


@contextmanager
def dnsmasq(
    net: PodNet,
    workdir: Path,
    hosts: Sequence[tuple[str, str, str]],
    *,
    hostname: str = "gu-guest",
    mtu: int = 1400,
    search: str = "gu.test",
    options: Sequence[str] = (),
) -> Iterator[Path]:
    """dnsmasq on the bridge: static v4 + v6 lease per ``(mac, ipv4, ipv6)``, RA with M flag.

    ``options`` are extra dnsmasq arguments (e.g. ``--dhcp-option=121,...``); later
    ``--dhcp-option`` values for the same option win. Yields the path of its log."""
    gw4 = net.gateway4.split("/")[0]
    gw6 = net.gateway6.split("/")[0]
    prefix4 = gw4.rsplit(".", 1)[0] + ".0"
    prefix6 = gw6.rsplit(":", 1)[0] + ":"
    log = workdir / "dnsmasq.log"
    argv = [
        "ip", "netns", "exec", net.netns, "dnsmasq", "--keep-in-foreground",
        "--conf-file=/dev/null", "--port=0", f"--interface={net.bridge}", "--bind-interfaces",
        f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}", f"--pid-file={workdir / 'dnsmasq.pid'}",
        f"--dhcp-range={prefix4},static,255.255.255.0,1h",
        f"--dhcp-range={prefix6},static,64,1h",
        "--enable-ra",
        f"--dhcp-option=option:router,{gw4}",
        f"--dhcp-option=option:dns-server,{gw4}",
        f"--dhcp-option=option:mtu,{mtu}",
        f"--dhcp-option=option6:dns-server,[{gw6}]",
        f"--dhcp-option=option6:domain-search,{search}",
        "--log-dhcp", f"--log-facility={log}",
    ]  # fmt: skip
    argv += list(options)
    for mac, v4, v6 in hosts:
        argv.append(f"--dhcp-host={mac},{v4},[{v6}],{hostname}")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise HarnessError(f"dnsmasq exited with {proc.returncode}: {err.strip()}")
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def boot(
    image: GuestImage,
    net: PodNet,
    workdir: Path,
    macs: Sequence[str],
    *,
    extra: Sequence[str] = (),
    cmdline_extra: str = "vl.ready_timeout=60",
    root_ports: int = 2,
    accel: str = "tcg",
    memory_mib: int = 256,
) -> Iterator[Vm]:
    """QEMU (q35, ``memory_mib`` MiB) in the netns with one virtio-net NIC per MAC on the taps.

    ``accel`` is TCG by default: this machine's /dev/kvm cannot boot a guest; on a node
    with working KVM pass ``"kvm"``. ``root_ports`` pcie-root-ports ``rp1..`` are left
    free for hot plug. The console is also written to ``workdir/console.log``. QEMU is
    killed on exit if still running."""
    if len(macs) > len(net.taps):
        raise HarnessError(f"{len(macs)} NICs asked for but netns {net.netns} has {net.taps}")
    qmp_path = workdir / "qmp.sock"
    argv = [
        "ip", "netns", "exec", net.netns,
        "qemu-system-x86_64", "-accel", accel, "-machine", "q35", "-m", str(memory_mib),
        "-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"{image.cmdline} {cmdline_extra}".strip(),
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
    ]  # fmt: skip
    for i in range(1, root_ports + 1):
        argv += ["-device", f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i}"]
    for i, mac in enumerate(macs):
        argv += [
            "-netdev", f"tap,id=n{i},ifname={net.taps[i]},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev=n{i},mac={mac}",
        ]  # fmt: skip
    argv += list(extra)
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(workdir / "console.log"))
    try:
        yield Vm(proc, console, qmp_path, started)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        console.wait_closed(5)


@contextmanager
def boot_disk(
    disk: Path,
    net: PodNet,
    workdir: Path,
    macs: Sequence[str],
    *,
    extra: Sequence[str] = (),
    memory_mib: int = 512,
    accel: str = "tcg",
) -> Iterator[Vm]:
    """QEMU booting ``disk`` (qcow2, virtio-blk) **through SeaBIOS**, one virtio NIC per MAC.

    For the Debian guest (testbed/guest/debian.py) booted by hand as the launcher would
    (q35, ``-cpu max`` under TCG, tap without vhost); ``extra`` adds devices (a cidata
    ISO). The guest writes to ``disk``: pass an overlay. Console and exit as in
    :func:`boot`."""
    if len(macs) > len(net.taps):
        raise HarnessError(f"{len(macs)} NICs asked for but netns {net.netns} has {net.taps}")
    qmp_path = workdir / "qmp.sock"
    blockdev = json.dumps(
        {"driver": "qcow2", "node-name": "root", "file": {"driver": "file", "filename": str(disk)}}
    )
    argv = [
        "ip", "netns", "exec", net.netns,
        "qemu-system-x86_64", "-accel", accel, "-machine", "q35", "-m", str(memory_mib),
        "-cpu", "max" if accel == "tcg" else "host",
        "-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio", "-no-reboot",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        "-blockdev", blockdev, "-device", "virtio-blk-pci,drive=root,bootindex=1",
    ]  # fmt: skip
    for i, mac in enumerate(macs):
        argv += [
            "-netdev", f"tap,id=n{i},ifname={net.taps[i]},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev=n{i},mac={mac}",
        ]  # fmt: skip
    argv += list(extra)
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(workdir / "console.log"))
    try:
        yield Vm(proc, console, qmp_path, started)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        console.wait_closed(5)


async def _qmp(path: Path, commands: Sequence[tuple[str, Mapping[str, object]]]) -> None:
    client = QMPClient("gu-harness")
    await asyncio.wait_for(client.connect(str(path)), timeout=QMP_TIMEOUT_S)
    try:
        for name, args in commands:
            await asyncio.wait_for(client.execute(name, dict(args) or None), QMP_TIMEOUT_S)
    finally:
        await asyncio.wait_for(client.disconnect(), timeout=QMP_TIMEOUT_S)


def qmp(vm: Vm, *commands: tuple[str, Mapping[str, object]]) -> None:
    """Run QMP commands in order on the VM's socket (each bounded by 10 s)."""
    asyncio.run(_qmp(vm.qmp_path, commands))


def powerdown(vm: Vm, timeout: float = 30.0) -> tuple[VlLine, float]:
    """Press the ACPI power button; the VL-POWER-BUTTON line and seconds until QEMU exited.

    Raises HarnessError unless the guest reports the button and QEMU exits with status 0
    within ``timeout``."""
    mark = vm.console.mark()
    pressed = time.monotonic()
    qmp(vm, ("system_powerdown", {}))
    line = vm.console.wait_for("POWER-BUTTON", timeout, since=mark)
    try:
        rc = vm.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise HarnessError(f"QEMU still running {timeout:.0f} s after the power button") from err
    exited = time.monotonic() - pressed
    if rc != 0:
        raise HarnessError(f"QEMU exited with {rc} after the power button")
    vm.console.wait_for("POWEROFF", 5, since=mark)
    return line, exited


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
    raise HarnessError(f"GET {url} from {netns} failed {attempts} times: {last}")


def http_body(netns: str, url: str, attempts: int = 15) -> str:
    """GET ``url`` from inside ``netns`` with curl, retried a bounded number of times 1 s
    apart; the body, or '' if it never answered (for tests that assert on the body)."""
    for _ in range(attempts):
        done = sh("ip", "netns", "exec", netns, "curl", "-sS", "-g", "--max-time", "2", url,
                  check=False, timeout=10)  # fmt: skip
        if done.returncode == 0:
            return done.stdout
        time.sleep(1)
    return ""


def cidata_iso(path: Path, files: Mapping[str, bytes]) -> None:
    """Write a NoCloud seed ISO (volume id ``cidata``, Rock Ridge + Joliet names)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for i, (name, data) in enumerate(sorted(files.items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()

"""Integration test: pinned guest PCI addresses as the guest kernel itself sees them.

Boots the tiny test guest (testbed/guest) under real QEMU (TCG) through the adapter with one
virtio NIC pinned at ``0000:07:00.0`` (KubeVirt's SR-IOV example address, bus 7: the NIC
sits behind the 7th root port), one pinned at ``0000:00:09.0`` (root bus) and one
unpinned, each on a tap in a ``pb-…`` netns. The guest's init prints a ``VL-PCI`` line per
PCI function from ``/sys/bus/pci/devices`` (docs/guest.md): a virtio-net function must be
at exactly those two addresses, and QMP ``query-pci`` must agree. A NIC hot plugged onto a
hot-plug port must still appear in the guest. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hypervisor.machine import KernelBoot, MachineConfig, NetDevice
from hypervisor.qemu import Qemu
from testbed.guest.build import ensure_guest

# ensure_guest() may have to rebuild the initramfs (busybox and kernel are cached apart).
pytestmark = pytest.mark.timeout(3000)

VIRTIO_NET = {"1af4:1041", "1af4:1000"}  # modern and transitional virtio-net
TAPS = ("pb-t0", "pb-t1", "pb-t2", "pb-t3")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pb-g{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for tap in TAPS:
            subprocess.run(
                ["ip", "-n", name, "tuntap", "add", "dev", tap, "mode", "tap"],
                check=True,
                timeout=10,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


async def lines_until(lines: AsyncIterator[str], token: str, limit: float) -> list[str]:
    """Console lines read (at most ``limit`` seconds) up to and including one with ``token``."""
    seen: list[str] = []
    async with asyncio.timeout(limit):
        async for line in lines:
            seen.append(line)
            if token in line:
                return seen
    raise AssertionError(f"the console ended before {token!r}; read: {seen[-20:]}")


def vl_pci(lines: list[str]) -> dict[str, tuple[str, str]]:
    """``{address: (vendor:device, class)}`` from the guest's VL-PCI lines."""
    out: dict[str, tuple[str, str]] = {}
    for line in lines:
        if "VL-PCI " in line:
            address, ids, cls = line.split("VL-PCI ", 1)[1].split()[:3]
            out[address] = (ids, cls)
    return out


def flat_pci(buses: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    """query-pci flattened to ``{qdev_id: device}``, bridges' buses included."""
    out: dict[object, dict[str, object]] = {}

    def walk(devices: list[dict[str, object]]) -> None:
        for dev in devices:
            out[dev.get("qdev_id")] = dev
            bridge = dev.get("pci_bridge")
            if isinstance(bridge, dict):
                walk(bridge.get("devices", []))

    for bus in buses:
        walk(bus["devices"])  # type: ignore[arg-type]
    return out


async def test_pinned_addresses_as_the_guest_sees_them(tmp_path: Path, netns: str) -> None:
    guest = await asyncio.to_thread(ensure_guest)
    wrapper = tmp_path / "qemu-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} qemu-system-x86_64 "$@"\n')
    wrapper.chmod(0o755)
    config = MachineConfig(
        name="pb-guest",
        vcpus=1,
        memory_bytes=256 << 20,
        kernel=KernelBoot(
            str(guest.kernel), str(guest.initrd), guest.cmdline + " vl.ready_timeout=2"
        ),
        nets=(
            NetDevice("east", "pb-t0", "52:54:00:70:62:07", 1500, pci_address="0000:07:00.0"),
            NetDevice("root9", "pb-t1", "52:54:00:70:62:09", 1500, pci_address="0000:00:09.0"),
            NetDevice("plain", "pb-t2", "52:54:00:70:62:01", 1500),
        ),
        hotplug_ports=2,
    )
    qemu = Qemu(binary=str(wrapper), run_dir=str(tmp_path / "run"), quit_timeout=5.0)
    try:
        await qemu.start(config)
        console = qemu.console_lines()
        seen = await lines_until(console, "VL-READY", 180)
        pci = vl_pci(seen)
        assert pci, f"no VL-PCI line before VL-READY: {seen[-20:]}"
        for address in ("0000:07:00.0", "0000:00:09.0"):
            assert address in pci, f"{address} not in the guest's PCI list {sorted(pci)}"
            ids, cls = pci[address]
            assert ids in VIRTIO_NET and cls == "020000", (address, ids, cls)
        virtio_nics = sorted(a for a, (ids, _c) in pci.items() if ids in VIRTIO_NET)
        assert len(virtio_nics) == 3, virtio_nics
        assert "nics=eth0,eth1,eth2" in seen[-1], seen[-1]

        # QEMU's own view after the firmware numbered the buses agrees with the guest's.
        by_id = flat_pci(await qemu.query_pci())
        assert (by_id["east"]["bus"], by_id["east"]["slot"], by_id["east"]["function"]) == (7, 0, 0)
        assert (by_id["root9"]["bus"], by_id["root9"]["slot"]) == (0, 9)
        plain = by_id["plain"]
        assert f"0000:{plain['bus']:02x}:00.0" in virtio_nics

        # hot plug still has its ports: a fourth NIC reaches the guest
        await qemu.add_net(NetDevice("hot", "pb-t3", "52:54:00:70:62:0f", 1500))
        added = await lines_until(console, "VL-NIC-ADDED", 60)
        assert "eth3" in added[-1]
    finally:
        await qemu.stop()

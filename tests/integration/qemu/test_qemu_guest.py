"""Integration test: the tiny test guest (testbed/guest) under real QEMU (TCG), via the adapter.

Boots the kernel + busybox initramfs with a NIC on a tap in a ``qm-…`` network namespace,
hot plugs and unplugs a second NIC (the guest reports VL-NIC-ADDED / VL-NIC-REMOVED), then
presses the ACPI power button: the guest prints VL-POWER-BUTTON and powers off, QEMU emits
SHUTDOWN with a guest-initiated reason and exits cleanly. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hypervisor.base import LifecycleEvent
from hypervisor.machine import KernelBoot, MachineConfig, NetDevice, VmState
from hypervisor.qemu import Qemu
from testbed.guest.build import ensure_guest

# ensure_guest() may have to build the guest first (apt download + busybox compile, bounded by
# its own 2400 s lock timeout); the VM part itself takes about 20 s.
pytestmark = pytest.mark.timeout(3000)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"qm-g{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for tap in ("qm-g0", "qm-g1"):
            subprocess.run(
                ["ip", "-n", name, "tuntap", "add", "dev", tap, "mode", "tap"],
                check=True,
                timeout=10,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


async def until_line(lines: AsyncIterator[str], token: str, limit: float) -> str:
    """Consume console lines (at most ``limit`` seconds) until one contains ``token``."""
    async with asyncio.timeout(limit):
        async for line in lines:
            if token in line:
                return line
    raise AssertionError(f"the console ended before {token!r}")


async def until_event(events: AsyncIterator[LifecycleEvent], name: str) -> LifecycleEvent:
    async with asyncio.timeout(60):
        async for event in events:
            if event.name == name:
                return event
    raise AssertionError(f"the event stream ended before {name!r}")


def state_of(qemu: Qemu) -> VmState:
    return qemu.state


async def test_guest_hotplug_and_power_button(tmp_path: Path, netns: str) -> None:
    guest = await asyncio.to_thread(ensure_guest)
    wrapper = tmp_path / "qemu-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} qemu-system-x86_64 "$@"\n')
    wrapper.chmod(0o755)
    config = MachineConfig(
        name="qm-guest",
        vcpus=1,
        memory_bytes=256 << 20,
        kernel=KernelBoot(
            str(guest.kernel), str(guest.initrd), guest.cmdline + " vl.ready_timeout=2"
        ),
        nets=(NetDevice("net0", "qm-g0", "52:54:00:71:6d:10", 1500),),
        hotplug_ports=2,
    )
    qemu = Qemu(binary=str(wrapper), run_dir=str(tmp_path / "run"), quit_timeout=5.0)
    try:
        await qemu.start(config)
        console = qemu.console_lines()
        events = qemu.events()
        await until_line(console, "VL-BOOT", 120)
        ready = await until_line(console, "VL-READY", 120)
        assert "nics=eth0" in ready

        await qemu.add_net(NetDevice("net1", "qm-g1", "52:54:00:71:6d:11", 1500))
        assert "eth1" in await until_line(console, "VL-NIC-ADDED", 60)
        await qemu.remove_device("net1")
        removed = await until_event(events, "device-removed")
        assert removed.details["device"] == "net1"
        assert "eth1" in await until_line(console, "VL-NIC-REMOVED", 60)

        loop = asyncio.get_running_loop()
        pressed = loop.time()
        await qemu.power_button()
        await until_line(console, "VL-POWER-BUTTON", 60)
        shutdown = await until_event(events, "shutdown")
        assert shutdown.details == {"guest": "true", "reason": "guest-shutdown"}
        async with asyncio.timeout(60):
            info = await qemu.wait()
        assert loop.time() - pressed < 60
        assert info.returncode == 0 and info.signal is None
        assert info.cause == "guest powered off"
        assert info.state is VmState.SHUTDOWN and state_of(qemu) is VmState.SHUTDOWN
    finally:
        await qemu.stop()

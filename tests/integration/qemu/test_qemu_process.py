"""Integration tests: a real qemu-system-x86_64 (TCG, SeaBIOS and no disk) driven over QMP.

Without a kernel QEMU runs SeaBIOS, prints its banner on the serial console and sits idle,
which is enough to exercise spawn, QMP, events, quit, crashes and the accelerator probe.
Devices are checked with a real network namespace (``qm-…``) holding real taps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hypervisor.base import Hypervisor, LifecycleEvent
from hypervisor.errors import HypervisorError, StateError
from hypervisor.machine import DiskImage, MachineConfig, NetDevice, VdpaDevice, VfioDevice, VmState
from hypervisor.qemu import Qemu, choose_accel

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
MAC = "52:54:00:71:6d:01"


def bare(name: str = "qm-test", **kw: object) -> MachineConfig:
    fields: dict[str, object] = {"name": name, "vcpus": 1, "memory_bytes": 128 * MIB}
    fields.update(kw)
    return MachineConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def vm(tmp_path: Path) -> AsyncIterator[Qemu]:
    qemu = Qemu(accel="tcg", run_dir=str(tmp_path / "run"), quit_timeout=5.0)
    try:
        yield qemu
    finally:
        if qemu.pid is not None:
            await qemu.stop()


async def collect(qemu: Qemu, into: list[LifecycleEvent]) -> None:
    async for event in qemu.events():
        into.append(event)


async def until_event(events: AsyncIterator[LifecycleEvent], name: str) -> LifecycleEvent:
    """Consume ``events`` (bounded in time) until one named ``name`` arrives."""
    async with asyncio.timeout(10):
        async for event in events:
            if event.name == name:
                return event
    raise AssertionError(f"the event stream ended before {name!r}")


def state_of(qemu: Qemu) -> VmState:
    """The state, read through a call (keeps mypy from narrowing ``qemu.state``)."""
    return qemu.state


def pid_of(qemu: Qemu) -> int | None:
    return qemu.pid


def exists(path: str | Path) -> bool:
    return Path(path).exists()


async def test_probe_says_tcg_on_this_machine_and_caches_it(tmp_path: Path) -> None:
    first = await choose_accel("auto", cache_dir=tmp_path)
    assert first.accel == "tcg", first
    assert not first.cached
    assert first.tcg_seconds is not None and first.tcg_seconds < 10
    if exists("/dev/kvm"):
        assert "KVM did not run the long-mode probe guest" in first.reason
    assert (tmp_path / "qemu-accel.json").exists()
    second = await choose_accel("auto", cache_dir=tmp_path)
    assert second.accel == "tcg" and second.cached
    assert second.reason == first.reason


async def test_start_query_status_pause_resume_quit(vm: Qemu) -> None:
    assert isinstance(vm, Hypervisor)
    assert state_of(vm) is VmState.CREATED
    assert pid_of(vm) is None
    await vm.start(bare())
    assert state_of(vm) is VmState.RUNNING
    assert vm.pid is not None and exists(f"/proc/{vm.pid}")
    assert (await vm._command("query-status"))["status"] == "running"
    events: list[LifecycleEvent] = []
    collector = asyncio.create_task(collect(vm, events))
    stream = vm.events()

    await vm.pause()
    assert (await until_event(stream, "paused")).state is VmState.PAUSED
    assert state_of(vm) is VmState.PAUSED
    assert (await vm._command("query-status"))["status"] == "paused"
    await vm.resume()
    assert (await until_event(stream, "resumed")).state is VmState.RUNNING
    assert state_of(vm) is VmState.RUNNING

    with pytest.raises(StateError):
        await vm.start(bare())

    await vm.stop()
    info = await vm.wait()
    assert info.returncode == 0 and info.signal is None
    assert info.state is VmState.SHUTDOWN and state_of(vm) is VmState.SHUTDOWN
    assert info.cause == "stopped by the launcher"
    async with asyncio.timeout(5):
        await collector  # the iterator ends when QEMU exits
    assert [e.name for e in events] == ["paused", "resumed", "shutdown"]
    assert events[-1].details == {"guest": "false", "reason": "host-qmp-quit"}
    assert not exists(f"/proc/{vm.pid}") or _is_zombie_free(vm.pid)
    with pytest.raises(StateError):
        await vm.power_button()


def _is_zombie_free(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True


async def test_serial_console_lines_carry_the_seabios_banner(vm: Qemu) -> None:
    seen: list[str] = []
    await vm.start(bare())
    async with asyncio.timeout(30):
        async for line in vm.console_lines():
            seen.append(line)
            if "SeaBIOS (version" in line:
                break
    assert any("SeaBIOS (version" in line for line in seen)


async def test_killed_qemu_is_failed_with_cause(vm: Qemu) -> None:
    await vm.start(bare())
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        info = await vm.wait()
    assert info.state is VmState.FAILED and state_of(vm) is VmState.FAILED
    assert info.returncode == -signal.SIGKILL and info.signal == signal.SIGKILL
    assert info.cause == "qemu was killed by SIGKILL"


async def test_sigterm_from_outside_is_a_clean_host_shutdown(vm: Qemu) -> None:
    await vm.start(bare())
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGTERM)
    async with asyncio.timeout(10):
        info = await vm.wait()
    assert info.returncode == 0
    assert info.state is VmState.SHUTDOWN
    assert info.cause == "qemu shut down (host-signal)"


async def test_qemu_that_fails_to_start_reports_its_stderr(vm: Qemu, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-disk.img"
    with pytest.raises(HypervisorError) as err:
        await vm.start(bare(disks=(DiskImage("d0", str(missing)),)))
    assert state_of(vm) is VmState.FAILED
    info = await vm.wait()
    assert info.returncode == 1 and info.state is VmState.FAILED
    assert info.cause.startswith("qemu exited with code 1: ")
    assert str(missing) in info.cause
    assert str(missing) in str(err.value)


async def test_socket_that_never_appears_times_out_and_kills(tmp_path: Path) -> None:
    # Stands in for a QEMU that hangs before creating its QMP socket.
    hang = tmp_path / "hanging-qemu"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    qemu = Qemu(binary=str(hang), run_dir=str(tmp_path / "run"), qmp_timeout=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(HypervisorError, match=r"did not accept a connection within 1\.0s"):
        await qemu.start(bare())
    assert loop.time() - started < 5
    info = await qemu.wait()
    assert info.signal == signal.SIGKILL
    assert state_of(qemu) is VmState.FAILED


async def test_missing_binary(tmp_path: Path) -> None:
    qemu = Qemu(binary=str(tmp_path / "nope"))
    with pytest.raises(HypervisorError, match="cannot execute QEMU binary"):
        await qemu.start(bare())
    assert state_of(qemu) is VmState.FAILED


async def test_stop_before_start_is_shutdown() -> None:
    qemu = Qemu()
    await qemu.stop()
    assert state_of(qemu) is VmState.SHUTDOWN


# -- devices in a real network namespace ---------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"qm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for tap, flags in (("qm-t0", ["multi_queue"]), ("qm-t1", []), ("qm-t2", [])):
            subprocess.run(
                ["ip", "-n", name, "tuntap", "add", "dev", tap, "mode", "tap", *flags],
                check=True,
                timeout=10,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def pci_devices(buses: list[dict[str, object]]) -> list[dict[str, object]]:
    """Flatten query-pci: every device on every bus, bridges' buses included."""
    out: list[dict[str, object]] = []

    def walk(devices: list[dict[str, object]]) -> None:
        for dev in devices:
            out.append(dev)
            bridge = dev.get("pci_bridge")
            if isinstance(bridge, dict):
                walk(bridge.get("devices", []))

    for bus in buses:
        walk(bus["devices"])  # type: ignore[arg-type]
    return out


async def numbered_pci(qemu: Qemu) -> dict[object, dict[str, object]]:
    """query-pci by qdev id, once the firmware has numbered every root port's bus."""
    async with asyncio.timeout(30):
        while True:
            devices = pci_devices(await qemu.query_pci())
            bridges = [d["pci_bridge"] for d in devices if "pci_bridge" in d]
            if all(b["bus"]["secondary"] for b in bridges):  # type: ignore[index]
                return {d.get("qdev_id"): d for d in devices}
            await asyncio.sleep(0.1)


async def test_devices_land_where_the_argv_says(tmp_path: Path, netns: str) -> None:
    wrapper = tmp_path / "qemu-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} qemu-system-x86_64 "$@"\n')
    wrapper.chmod(0o755)
    disk = tmp_path / "root.qcow2"
    img = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"
    )
    async with asyncio.timeout(30):
        assert await img.wait() == 0
    iso = tmp_path / "seed.iso"
    iso.write_bytes(b"\0" * (2048 * 16))
    config = bare(
        nets=(
            NetDevice("net0", "qm-t0", MAC, 1400, queues=2, pci_address="0000:00:09.0"),
            NetDevice("net1", "qm-t1", "52:54:00:71:6d:02", 1500, boot_order=1),
        ),
        disks=(
            DiskImage("root", str(disk), "qcow2", boot_order=2),
            DiskImage("cd0", str(iso), cdrom=True),
        ),
        hotplug_ports=2,
    )
    qemu = Qemu(binary=str(wrapper), run_dir=str(tmp_path / "run"), quit_timeout=5.0)
    try:
        await qemu.start(config)
        by_id = await numbered_pci(qemu)
        # the pinned NIC sits on the root bus at exactly slot 9, function 0
        assert by_id["net0"]["bus"] == 0 and by_id["net0"]["slot"] == 9
        assert by_id["net0"]["function"] == 0
        # everything else sits behind a root port (a non-zero bus)
        for dev_id in ("net1", "root", "scsi0"):
            assert by_id[dev_id]["bus"] != 0, dev_id
        assert {"hp0", "hp1", "rp-net1", "rp-root", "rp-scsi0"} <= set(by_id)
        assert "rp-net0" not in by_id

        net_info = await qemu._command("human-monitor-command", {"command-line": "info network"})
        assert "ifname=qm-t0" in net_info and "ifname=qm-t1" in net_info

        # hot plug a NIC onto the first free hot-plug port
        await qemu.add_net(NetDevice("net2", "qm-t2", "52:54:00:71:6d:03", 1500))
        by_id = await numbered_pci(qemu)
        hp0_bus = by_id["hp0"]["pci_bridge"]["bus"]["secondary"]  # type: ignore[index]
        assert by_id["net2"]["bus"] == hp0_bus
        with pytest.raises(HypervisorError, match="'net2' is already hot plugged"):
            await qemu.add_net(NetDevice("net2", "qm-t2", "52:54:00:71:6d:03", 1500))
    finally:
        await qemu.stop()
    assert (await qemu.wait()).state is VmState.SHUTDOWN


async def test_qmp_error_reply_names_the_command(vm: Qemu) -> None:
    await vm.start(bare())
    with pytest.raises(
        HypervisorError, match="QMP command no-such-command failed: CommandNotFound"
    ):
        await vm._command("no-such-command")
    with pytest.raises(HypervisorError, match="device_del failed: DeviceNotFound"):
        await vm.remove_device("ghost0")
    assert state_of(vm) is VmState.RUNNING  # a refused command does not change the state


def panic_firmware(path: Path) -> Path:
    """A 64 KiB -bios image: spin ~3-4 s under TCG, then write 1 to pvpanic (port 0x505).

    The spin leaves time for the adapter to connect QMP before the panic.

    Code at 0xfffe0: ``mov ecx, 0xa0000000; a32 loop $; mov dx, 0x505; mov al, 1;
    out dx, al; hlt``; the reset vector at 0xffff0 jumps back to it.
    """
    image = bytearray(b"\xf4" * 0x10000)
    code = bytes.fromhex("66b9000000a067e2fdba0505b001eef4")
    image[0xFFE0 : 0xFFE0 + len(code)] = code
    image[0xFFF0:0xFFF2] = bytes([0xEB, 0xEE])  # jmp short 0xffe0
    path.write_bytes(bytes(image))
    return path


async def test_guest_panic_is_failed(vm: Qemu, tmp_path: Path) -> None:
    firmware = panic_firmware(tmp_path / "panic.bin")
    await vm.start(bare(firmware=str(firmware)))
    events = vm.events()
    panic = await until_event(events, "panic")
    assert panic.state is VmState.FAILED
    assert panic.details.get("action") == "poweroff"
    async with asyncio.timeout(10):
        info = await vm.wait()
    assert info.returncode == 0
    assert info.state is VmState.FAILED and state_of(vm) is VmState.FAILED
    assert info.cause == "guest panicked"


async def test_stop_escalates_when_qemu_does_not_answer(tmp_path: Path) -> None:
    qemu = Qemu(run_dir=str(tmp_path / "run"), command_timeout=1.0, quit_timeout=1.0)
    await qemu.start(bare())
    assert qemu.pid is not None
    os.kill(qemu.pid, signal.SIGSTOP)  # QMP quit and SIGTERM go unanswered; SIGKILL works
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await qemu.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(qemu.pid, signal.SIGCONT)
    assert loop.time() - started < 8
    info = await qemu.wait()
    assert info.signal == signal.SIGKILL
    assert info.state is VmState.SHUTDOWN
    assert info.cause == "stopped by the launcher (qemu was killed by SIGKILL)"


def open_tap_in_netns(netns: str, tap: str, queues: int) -> list[int]:
    """Open ``tap`` inside ``netns`` from a throwaway thread (setns is per thread)."""
    import ctypes
    import threading

    from hypervisor.cloud_hypervisor.taps import open_tap

    result: list[int] = []
    problem: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
            result.extend(open_tap(tap, queues))
        except (OSError, HypervisorError) as err:  # handed to the test thread below
            problem.append(err)
        finally:
            os.close(fd)

    worker = threading.Thread(target=run, name=f"open-{tap}")
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "opening the tap hung"
    if problem:
        raise problem[0]
    return result


async def test_tap_fds_at_start_and_by_scm_rights_on_hot_plug(tmp_path: Path, netns: str) -> None:
    start_fds = open_tap_in_netns(netns, "qm-t0", 2)
    plug_fds = open_tap_in_netns(netns, "qm-t1", 1)
    config = bare(nets=(NetDevice("net0", "qm-t0", MAC, 1500, queues=2),), hotplug_ports=1)
    qemu = Qemu(run_dir=str(tmp_path / "run"), tap_fds={"net0": start_fds}, quit_timeout=5.0)
    try:
        await qemu.start(config)
        assert "fds=" in " ".join(qemu.argv)
        for fd in start_fds:  # QEMU holds its own copies now
            os.close(fd)
        start_fds = []
        await qemu.add_net(NetDevice("net1", "qm-t1", "52:54:00:71:6d:02", 1500), plug_fds)
        by_id = await numbered_pci(qemu)
        hp0_bus = by_id["hp0"]["pci_bridge"]["bus"]["secondary"]  # type: ignore[index]
        assert by_id["net1"]["bus"] == hp0_bus
        assert by_id["net0"]["bus"] != 0
        pid = qemu.pid
        assert pid is not None
        # QEMU's fd table holds tun fds: two queues for net0 and one for the hot-plugged net1
        tun = [
            fd
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun"
        ]
        assert len(tun) == 3, tun
    finally:
        for fd in start_fds + plug_fds:
            os.close(fd)
        await qemu.stop()
    assert (await qemu.wait()).state is VmState.SHUTDOWN


async def test_refused_hot_plug_frees_its_port(tmp_path: Path, netns: str) -> None:
    wrapper = tmp_path / "qemu-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} qemu-system-x86_64 "$@"\n')
    wrapper.chmod(0o755)
    qemu = Qemu(binary=str(wrapper), run_dir=str(tmp_path / "run"), quit_timeout=5.0)
    try:
        await qemu.start(bare(hotplug_ports=1))
        # no such host device / vDPA device here: QEMU refuses, the adapter says which
        with pytest.raises(HypervisorError, match="device_add failed") as vfio_err:
            await qemu.add_vfio(VfioDevice("vf0", "/sys/bus/pci/devices/0000:99:1f.7"))
        assert "0000:99:1f.7" in str(vfio_err.value)
        with pytest.raises(HypervisorError, match="netdev_add failed") as vdpa_err:
            await qemu.add_vdpa(VdpaDevice("vd0", str(tmp_path / "vhost-vdpa-9")))
        assert "vhost-vdpa-9" in str(vdpa_err.value)
        # the single hot-plug port is still free for a NIC that works
        await qemu.add_net(NetDevice("net9", "qm-t1", "52:54:00:71:6d:09", 1500))
        by_id = await numbered_pci(qemu)
        hp0_bus = by_id["hp0"]["pci_bridge"]["bus"]["secondary"]  # type: ignore[index]
        assert by_id["net9"]["bus"] == hp0_bus
        with pytest.raises(HypervisorError, match="no free hot-plug port for net10"):
            await qemu.add_net(NetDevice("net10", "qm-t2", "52:54:00:71:6d:0a", 1500))
    finally:
        await qemu.stop()

"""CloudHypervisor (the Hypervisor protocol) driving the fake ``cloud-hypervisor`` executable.

The fake is ``fake_vmm.py`` run as a program: it is spawned with the real argv, creates
the API socket, writes the real event-monitor format to the passed fd, enforces the
OpenAPI contract and records what it received (fds, requests) for the assertions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypervisor.base import Hypervisor, LifecycleEvent, RunAs
from hypervisor.cloud_hypervisor.adapter import CloudHypervisor
from hypervisor.cloud_hypervisor.events import EventParser
from hypervisor.cloud_hypervisor.process import VmmProcess, require_binary
from hypervisor.errors import HypervisorError, StateError
from hypervisor.machine import KernelBoot, MachineConfig, NetDevice, VfioDevice, VmState

REPO = Path(__file__).resolve().parents[3]
MACHINE = MachineConfig(
    name="vm",
    vcpus=1,
    memory_bytes=512 << 20,
    kernel=KernelBoot(kernel="/boot/vmlinuz", initrd="/boot/initrd", cmdline="console=ttyS0"),
    nets=(
        NetDevice(id="net0", tap="tap0", mac="52:54:00:00:00:01", mtu=1450, queues=2),
        NetDevice(id="net1", tap="tap1", mac="52:54:00:00:00:02", mtu=1500),
    ),
)


@pytest.fixture
def binary(sock_dir: str) -> str:
    """An executable that runs the fake VMM with this venv's python."""
    path = Path(sock_dir) / "cloud-hypervisor"
    path.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={REPO} exec {sys.executable} -m tests.component.cloud_hypervisor.fake_vmm"
        ' "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def record(sock_dir: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = Path(sock_dir) / "record.json"
    monkeypatch.setenv("FAKE_CH_RECORD", str(path))
    return path


class PipeTaps:
    """A tap opener handing out pipe read ends (no tap device needed), remembering inodes."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int]] = []
        self._write_ends: list[int] = []

    def __call__(self, name: str, queues: int) -> list[int]:
        fds = []
        for _ in range(queues):
            r, w = os.pipe()
            self._write_ends.append(w)
            self.opened.append((name, os.fstat(r).st_ino))
            fds.append(r)
        return fds

    def close(self) -> None:
        for w in self._write_ends:
            os.close(w)


@pytest.fixture
def taps() -> Iterator[PipeTaps]:
    t = PipeTaps()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
async def vmm(binary: str, sock_dir: str, taps: PipeTaps) -> AsyncIterator[CloudHypervisor]:
    ch = CloudHypervisor(
        binary=binary,
        api_socket=os.path.join(sock_dir, "api.sock"),
        api_timeout=5.0,
        socket_timeout=10.0,
        stop_timeout=5.0,
        tap_opener=taps,
    )
    yield ch
    if ch.pid is not None:
        await ch.stop()


def recorded(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["violations"] == []
    return data


def state_of(ch: CloudHypervisor) -> VmState:
    """The state now (a function, so mypy does not narrow the property across awaits)."""
    return ch.state


async def collect(ch: CloudHypervisor) -> list[LifecycleEvent]:
    return [e async for e in ch.events()]


async def test_start_power_button_guest_powers_off(
    vmm: CloudHypervisor, taps: PipeTaps, record: Path
) -> None:
    assert isinstance(vmm, Hypervisor)
    assert vmm.kind == "cloud-hypervisor"
    assert state_of(vmm) is VmState.CREATED
    serial: list[str] = []
    vmm.on_serial = serial.append
    await vmm.start(MACHINE)
    assert state_of(vmm) is VmState.RUNNING
    assert isinstance(vmm.pid, int)
    assert await vmm.counters() == {
        "net0": {"rx_bytes": 1500, "rx_frames": 1, "tx_bytes": 0, "tx_frames": 0},
        "net1": {"rx_bytes": 1500, "rx_frames": 1, "tx_bytes": 0, "tx_frames": 0},
    }
    events_task = asyncio.create_task(collect(vmm))
    await vmm.power_button()
    info = await asyncio.wait_for(vmm.wait(), 10)
    assert (info.returncode, info.state, info.cause) == (0, VmState.SHUTDOWN, "guest powered off")
    assert vmm.state is VmState.SHUTDOWN
    events = await asyncio.wait_for(events_task, 5)
    assert [(e.source, e.name) for e in events] == [
        ("vmm", "starting"),
        ("vm", "booting"),
        ("vm", "booted"),
        ("vm", "shutdown"),
        ("vmm", "shutdown"),
    ]
    assert serial == ["fake cloud-hypervisor serial console"]
    data = recorded(record)
    assert data["requests"] == [
        ["GET", "vmm.ping", 0],
        ["PUT", "vm.create", 0],
        ["PUT", "vm.add-net", 2],
        ["PUT", "vm.add-net", 1],
        ["PUT", "vm.boot", 0],
        ["GET", "vm.counters", 0],
        ["PUT", "vm.power-button", 0],
    ]
    fds = data["fds"]
    assert [(f["device_id"], f["kind"], f["ino"]) for f in fds] == [
        ("net0", "fifo", taps.opened[0][1]),
        ("net0", "fifo", taps.opened[1][1]),
        ("net1", "fifo", taps.opened[2][1]),
    ]
    assert [n for n, _ in taps.opened] == ["tap0", "tap0", "tap1"]
    nets = {d["id"]: d for d in data["devices"].values() if "mac" in d}
    assert nets["net0"]["num_queues"] == 4 and nets["net1"]["num_queues"] == 2
    assert "tap" not in nets["net0"]


async def test_stop_asks_vmm_shutdown(vmm: CloudHypervisor, record: Path) -> None:
    await vmm.start(MACHINE)
    await vmm.stop()
    info = await vmm.wait()
    assert info.returncode == 0 and info.state is VmState.SHUTDOWN
    assert info.cause.startswith("stopped by the launcher")
    assert ["PUT", "vmm.shutdown", 0] in recorded(record)["requests"]
    await vmm.stop()  # a second stop is a no-op


async def test_stubborn_vmm_gets_sigterm_then_sigkill(
    vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "stubborn")
    vmm.stop_timeout = 0.5
    await vmm.start(MACHINE)
    await asyncio.wait_for(vmm.stop(), 10)
    info = await vmm.wait()
    assert (info.returncode, info.signal) == (-signal.SIGKILL, signal.SIGKILL)
    assert info.state is VmState.SHUTDOWN
    assert "killed by SIGKILL" in info.cause


async def test_vmm_exits_before_socket(
    vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "exit-early")
    with pytest.raises(HypervisorError) as err:
        await vmm.start(MACHINE)
    msg = str(err.value)
    assert "exited with code 1" in msg and "Failed to open /dev/kvm" in msg
    assert vmm.api_socket in msg
    assert vmm.state is VmState.FAILED
    info = await vmm.wait()
    assert info.returncode == 1 and info.state is VmState.FAILED
    assert "Failed to open /dev/kvm" in info.stderr_tail


async def test_socket_never_appears(vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "no-socket")
    vmm.socket_timeout = 0.5
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(
        HypervisorError, match=f"API socket {vmm.api_socket} did not appear within 0.5 s"
    ):
        await vmm.start(MACHINE)
    assert loop.time() - started < 5
    assert vmm.state is VmState.FAILED
    info = await asyncio.wait_for(vmm.wait(), 5)  # the VMM was killed, not left behind
    assert info.returncode == -signal.SIGKILL


async def test_vmm_dies_during_boot(vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "die-on-boot")
    with pytest.raises(HypervisorError) as err:
        await vmm.start(MACHINE)
    assert "exited with code 3: Error booting VM: fake crash on vm.boot" in str(err.value)
    assert vmm.state is VmState.FAILED
    assert (await vmm.wait()).returncode == 3


async def test_guest_panic_fails_the_vm(
    vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "panic")
    await vmm.start(MACHINE)
    for _ in range(250):
        if vmm.state is VmState.FAILED:
            break
        await asyncio.sleep(0.02)
    assert vmm.state is VmState.FAILED
    with pytest.raises(StateError):
        await vmm.power_button()
    await vmm.stop()
    info = await vmm.wait()
    assert (info.state, info.cause) == (VmState.FAILED, "the guest panicked")


async def test_guest_ignoring_power_button_keeps_running(
    vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "ignore-power")
    await vmm.start(MACHINE)
    await vmm.power_button()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(vmm.wait(), 0.5)
    assert vmm.state is VmState.RUNNING
    await vmm.stop()
    assert (await vmm.wait()).cause.startswith("stopped by the launcher")


async def test_hot_plug_and_unplug(vmm: CloudHypervisor, taps: PipeTaps, record: Path) -> None:
    await vmm.start(MACHINE)
    r, w = os.pipe()
    try:
        await vmm.add_net(NetDevice(id="net2", tap="tap2", mac="52:54:00:00:00:03", mtu=1500), [r])
        os.fstat(r)  # caller-owned fds stay open
    finally:
        os.close(r)
        os.close(w)
    await vmm.add_vfio(VfioDevice(id="vf0", sysfs_path="/sys/bus/pci/devices/0000:58:01.2"))
    await vmm.remove_device("vf0")
    with pytest.raises(HypervisorError, match=r"vm\.remove-device answered HTTP 500"):
        await vmm.remove_device("vf0")
    await vmm.stop()
    data = recorded(record)
    assert ["PUT", "vm.add-net", 1] in data["requests"]
    assert "vf0" not in data["devices"]
    assert "net2" in data["devices"]


async def test_over_long_serial_line_is_dropped_not_fatal(
    vmm: CloudHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CH_MODE", "long-serial")
    serial: list[str] = []
    vmm.on_serial = serial.append
    await vmm.start(MACHINE)
    for _ in range(250):
        if serial:
            break
        await asyncio.sleep(0.02)
    assert serial == ["fake cloud-hypervisor serial console"]
    assert state_of(vmm) is VmState.RUNNING


async def test_operations_in_wrong_state(vmm: CloudHypervisor) -> None:
    with pytest.raises(StateError, match="needs state Running but the VM is Created"):
        await vmm.power_button()
    with pytest.raises(StateError):
        await vmm.counters()
    with pytest.raises(StateError):
        await vmm.wait()
    await vmm.start(MACHINE)
    with pytest.raises(StateError, match="needs state Created but the VM is Running"):
        await vmm.start(MACHINE)


async def test_missing_binary(sock_dir: str) -> None:
    ch = CloudHypervisor(binary="/nonexistent/cloud-hypervisor", api_socket=f"{sock_dir}/a.sock")
    with pytest.raises(
        HypervisorError, match="cannot execute cloud-hypervisor binary '/nonexistent"
    ) as caught:
        await ch.start(MACHINE)
    assert ch.state is VmState.FAILED
    assert "does not exist" in str(caught.value)
    assert "--hypervisor qemu" in str(caught.value)


async def test_binary_not_on_path_names_it_and_the_qemu_choice(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image carries no cloud-hypervisor: a Virtink spec's default VMM is not on PATH."""
    monkeypatch.setenv("PATH", sock_dir)
    ch = CloudHypervisor(binary="cloud-hypervisor", api_socket=f"{sock_dir}/a.sock")
    with pytest.raises(HypervisorError) as caught:
        await ch.start(MACHINE)
    assert str(caught.value) == (
        "cannot execute cloud-hypervisor binary 'cloud-hypervisor': it is not on PATH; run "
        "this VM with QEMU instead (--hypervisor qemu) or add a cloud-hypervisor release to "
        "the image (docs/image.md)"
    )
    with pytest.raises(HypervisorError, match="is not on PATH") as early:
        require_binary("cloud-hypervisor")
    assert str(early.value) == str(caught.value)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    require_binary("sh")  # present: no error


async def test_bad_config_refused_before_spawning(vmm: CloudHypervisor) -> None:
    with pytest.raises(HypervisorError, match="neither a kernel nor a firmware"):
        await vmm.start(MachineConfig(name="x", vcpus=1, memory_bytes=1 << 30))
    assert vmm.pid is None


async def test_process_sigterm_ends_it_and_events_flow(binary: str, sock_dir: str) -> None:
    """Process level: spawn, the API socket appears, event lines flow, SIGTERM ends it."""
    path = os.path.join(sock_dir, "p.sock")
    proc = await VmmProcess.spawn(binary, path)
    try:
        await proc.wait_for_socket(path, 10)
        proc.signal(signal.SIGTERM)
        assert await proc.wait(10) == 0
        data = await asyncio.wait_for(proc.events.read(), 5)
        names = [(e.source, e.name) for e in EventParser().feed(data)]
        assert names == [("vmm", "starting"), ("vmm", "shutdown")]
    finally:
        proc.signal(signal.SIGKILL)
        await proc.close()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"a\nb", b"c\r\n"], ["a", "bc"]),
        ([b"x" * 70000, b"x" * 70000 + b"\nok\n"], ["ok"]),
        ([b"x" * 70000 + b"\nok\nlast"], ["ok", "last"]),
        ([b"y" * 65537 + b"\nz\n"], ["z"]),
    ],
)
async def test_console_line_splitting(chunks: list[bytes], expected: list[str]) -> None:
    from hypervisor.cloud_hypervisor.process import _lines

    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    assert [line async for line in _lines(reader, "test")] == expected


async def test_run_as_a_user_the_api_socket_is_passed_in_listening(
    binary: str, sock_dir: str, taps: PipeTaps, record: Path
) -> None:
    """With ``run_as`` the adapter makes the API socket and passes it as ``--api-socket
    fd=N`` (cloud-hypervisor's documented form), so the VMM needs no access to the socket's
    directory; the user switch itself runs as this test's own user here."""
    api = os.path.join(sock_dir, "api.sock")
    ch = CloudHypervisor(
        binary=binary,
        api_socket=api,
        api_timeout=5.0,
        socket_timeout=10.0,
        stop_timeout=5.0,
        tap_opener=taps,
        run_as=RunAs(os.getuid(), os.getgid(), ()),
    )
    await ch.start(MACHINE)
    try:
        assert ch.pid is not None
        raw = await asyncio.to_thread(Path(f"/proc/{ch.pid}/cmdline").read_bytes)
        cmdline = raw.split(b"\0")
        api_arg = cmdline[cmdline.index(b"--api-socket") + 1]
        assert api_arg.startswith(b"fd="), cmdline
        assert stat.S_ISSOCK(os.stat(api).st_mode)
        assert (await ch.counters())["net0"]["rx_frames"] == 1
    finally:
        await ch.stop()
    assert recorded(record)["requests"][0] == ["GET", "vmm.ping", 0]

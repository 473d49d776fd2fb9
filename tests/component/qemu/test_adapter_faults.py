"""Component tests: the QEMU adapter against a fake QMP server for faults real QEMU cannot
produce on this machine (KVM internal error, an unanswered command, a crash mid-command).

The fake (``fake_qemu.py``) speaks QEMU 7.2's QMP wire format as captured from the real
binary; the ordinary paths are covered by tests/integration/qemu with real QEMU.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hypervisor.base import LifecycleEvent
from hypervisor.errors import HypervisorError
from hypervisor.machine import MachineConfig, VmState
from hypervisor.qemu import Qemu, QmpGoneError

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).with_name("fake_qemu.py")
CONFIG = MachineConfig(name="fake", vcpus=1, memory_bytes=64 << 20)


def fake_binary(tmp_path: Path, scenario: str) -> str:
    """A wrapper executable running the fake with ``scenario`` under this interpreter."""
    wrapper = tmp_path / f"qemu-{scenario}"
    wrapper.write_text(
        f'#!/bin/sh\nFAKE_QEMU_SCENARIO={scenario} exec {sys.executable} {FAKE} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


async def next_named(events: AsyncIterator[LifecycleEvent], name: str) -> LifecycleEvent:
    async with asyncio.timeout(10):
        async for event in events:
            if event.name == name:
                return event
    raise AssertionError(f"no {name!r} event before the stream ended")


def state_of(qemu: Qemu) -> VmState:
    return qemu.state


async def test_kvm_internal_error_is_failed_not_paused(tmp_path: Path) -> None:
    qemu = Qemu(binary=fake_binary(tmp_path, "internal-error"), run_dir=str(tmp_path / "r"))
    await qemu.start(CONFIG)
    assert state_of(qemu) is VmState.RUNNING
    failed = await next_named(qemu.events(), "internal-error")
    assert failed.state is VmState.FAILED
    assert failed.details["status"] == "internal-error"
    assert state_of(qemu) is VmState.FAILED
    await qemu.stop()
    info = await qemu.wait()
    assert info.returncode == 0
    assert info.state is VmState.FAILED
    assert info.cause == "the guest stopped with a hypervisor internal error"


async def test_unanswered_command_times_out_naming_it(tmp_path: Path) -> None:
    qemu = Qemu(
        binary=fake_binary(tmp_path, "hang"),
        run_dir=str(tmp_path / "r"),
        command_timeout=0.5,
    )
    await qemu.start(CONFIG)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(HypervisorError, match=r"system_powerdown got no answer within 0\.5s"):
        await qemu.power_button()
    assert loop.time() - started < 3
    assert state_of(qemu) is VmState.RUNNING
    await qemu.stop()
    assert (await qemu.wait()).cause == "stopped by the launcher"


async def test_crash_during_a_command(tmp_path: Path) -> None:
    qemu = Qemu(binary=fake_binary(tmp_path, "crash"), run_dir=str(tmp_path / "r"))
    await qemu.start(CONFIG)
    with pytest.raises(QmpGoneError, match="system_powerdown"):
        await qemu.power_button()
    async with asyncio.timeout(10):
        info = await qemu.wait()
    assert info.returncode == 1
    assert info.state is VmState.FAILED and state_of(qemu) is VmState.FAILED
    assert (
        info.cause == "qemu exited with code 1: qemu-system-x86_64: fake crash while powering down"
    )


async def _session_transcript(binary: str, tmp_path: Path) -> tuple[dict[str, Any], Any, Any]:
    """Greeting, query-status answer and the error for an unknown command, from ``binary``."""
    sock = tmp_path / "t.sock"
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-nodefaults",
        "-display",
        "none",
        "-qmp",
        f"unix:{sock},server=on,wait=off",
        env={**os.environ, "FAKE_QEMU_SCENARIO": ""},
    )
    try:
        async with asyncio.timeout(10):
            for _ in range(500):  # QEMU creates the socket shortly after it starts
                try:
                    reader, writer = await asyncio.open_unix_connection(str(sock))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"{binary} never opened {sock}")
            greeting = json.loads(await reader.readline())
            answers = []
            for command in ("qmp_capabilities", "query-status", "no-such-command"):
                writer.write(json.dumps({"execute": command}).encode())  # no newline, like qemu.qmp
                answers.append(json.loads(await reader.readline()))
            writer.write(json.dumps({"execute": "quit"}).encode())
            shutdown = json.loads(await reader.readline())  # read before hanging up
            assert shutdown["event"] == "SHUTDOWN", shutdown
            writer.close()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return greeting, answers[1], answers[2]


def subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def _shape(value: Any) -> Any:
    """The JSON structure without the values: dict keys and value types, recursively."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


async def test_fake_speaks_like_the_real_qemu(tmp_path: Path) -> None:
    real = await _session_transcript("qemu-system-x86_64", subdir(tmp_path, "real"))
    fake = await _session_transcript(fake_binary(tmp_path, "none"), subdir(tmp_path, "fake"))
    assert _shape(fake[0]) == _shape(real[0])  # greeting
    assert (
        fake[1]
        == real[1]
        == {"return": {"status": "running", "singlestep": False, "running": True}}
    )
    assert fake[2]["error"]["class"] == real[2]["error"]["class"] == "CommandNotFound"

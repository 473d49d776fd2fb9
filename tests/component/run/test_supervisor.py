"""The supervisor's decisions: how a run ends and what it does on SIGTERM, with a real child.

Uses :mod:`tests.component.run.fake_vmm` (a Hypervisor around a real child process, the
VMM binary being the only fake); the real QEMU path is covered end to end by
tests/e2e/test_run_launcher.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest

from hypervisor.base import Hypervisor
from hypervisor.machine import MachineConfig, VmState
from launcher.errors import (
    EXIT_GRACE_EXPIRED,
    EXIT_HYPERVISOR,
    GraceExpiredError,
    HypervisorError,
    exit_code_for,
)
from launcher.supervisor import REPEAT_WINDOW_S, Supervisor

from .fake_vmm import FakeVmm

CONFIG = MachineConfig(name="vm", vcpus=1, memory_bytes=256 << 20)


def alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def started(sup: Supervisor) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(sup.run(CONFIG))
    for _ in range(200):
        if sup.phase == "running":
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"supervisor never reached running (phase {sup.phase})")


def test_fake_is_a_hypervisor() -> None:
    assert isinstance(FakeVmm(), Hypervisor)


async def test_guest_power_off_on_its_own_is_a_clean_end() -> None:
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=5)
    task = await started(sup)
    assert vmm.pid is not None
    os.kill(vmm.pid, signal.SIGUSR1)  # the guest powers itself off
    async with asyncio.timeout(5):
        outcome = await task
    assert outcome.cause == "guest powered off"  # type: ignore[attr-defined]
    assert vmm.calls == ["start"]


async def test_vmm_crash_is_noticed_at_once_and_is_a_hypervisor_error() -> None:
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=5)
    task = await started(sup)
    assert vmm.pid is not None
    killed = time.monotonic()
    os.kill(vmm.pid, signal.SIGKILL)
    with pytest.raises(HypervisorError) as info:
        async with asyncio.timeout(5):
            await task
    assert time.monotonic() - killed < 1.0  # an exit wait, not a polling loop
    assert "ended unexpectedly: fake was killed by SIGKILL" in str(info.value)
    assert exit_code_for(info.value) == EXIT_HYPERVISOR


async def test_stop_presses_power_button_and_ends_cleanly_within_grace() -> None:
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=10)
    task = await started(sup)
    asked = time.monotonic()
    sup.request_stop("SIGTERM")
    async with asyncio.timeout(5):
        outcome = await task
    assert time.monotonic() - asked < 2.0
    assert outcome.cause == "guest powered off after SIGTERM"  # type: ignore[attr-defined]
    assert vmm.calls == ["start", "power_button"]
    assert vmm.state is VmState.SHUTDOWN


async def test_grace_expired_stops_hard_and_exits_5() -> None:
    vmm = FakeVmm("ignore-button")
    sup = Supervisor(vmm, grace_s=0.5)
    task = await started(sup)
    pid = vmm.pid
    sup.request_stop("SIGTERM")
    with pytest.raises(GraceExpiredError) as info:
        async with asyncio.timeout(10):
            await task
    assert exit_code_for(info.value) == EXIT_GRACE_EXPIRED
    assert "did not power off within the 0.5 s grace period after SIGTERM" in str(info.value)
    assert vmm.calls == ["start", "power_button", "stop", "send SIGUSR2"]  # quit sufficed
    assert not alive(pid)


async def test_hard_stop_escalates_to_sigkill_each_step_bounded() -> None:
    vmm = FakeVmm("ignore-quit", step_timeout=0.3)
    sup = Supervisor(vmm, grace_s=0.3)
    task = await started(sup)
    pid = vmm.pid
    sup.request_stop("SIGTERM")
    began = time.monotonic()
    with pytest.raises(GraceExpiredError):
        async with asyncio.timeout(10):
            await task
    assert time.monotonic() - began < 3.0
    assert vmm.calls[-3:] == ["send SIGUSR2", "send SIGTERM", "send SIGKILL"]
    assert "killed by SIGKILL" in str(task.exception())
    assert not alive(pid)


async def test_second_stop_request_skips_the_rest_of_the_grace_period() -> None:
    vmm = FakeVmm("ignore-button")
    sup = Supervisor(vmm, grace_s=30)
    task = await started(sup)
    sup.request_stop("SIGTERM")
    await asyncio.sleep(REPEAT_WINDOW_S + 0.2)
    began = time.monotonic()
    sup.request_stop("SIGINT")
    with pytest.raises(GraceExpiredError) as info:
        async with asyncio.timeout(10):
            await task
    assert time.monotonic() - began < 3.0
    # The true reason: a second signal, not an expired grace period.
    said = str(info.value)
    assert re.search(r"a second SIGINT came \d+\.\d s into the grace period of 30 s", said)
    assert "did not power off" not in str(info.value)


async def test_a_signal_repeated_at_once_is_the_same_request() -> None:
    """Two SIGTERMs 50 ms apart: one stop; the guest powers off in its own time (exit 0)."""
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=10)
    task = await started(sup)
    sup.request_stop("SIGTERM")
    await asyncio.sleep(0.05)
    sup.request_stop("SIGTERM")
    async with asyncio.timeout(5):
        outcome = await task
    assert outcome.cause == "guest powered off after SIGTERM"  # type: ignore[attr-defined]


async def test_a_stopped_vmm_is_continued_then_powers_off() -> None:
    """A VMM stopped with SIGSTOP: SIGTERM sends it SIGCONT, then the power button works."""
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=10)
    task = await started(sup)
    assert vmm.pid is not None
    os.kill(vmm.pid, signal.SIGSTOP)
    await asyncio.sleep(0.1)
    sup.request_stop("SIGTERM")
    async with asyncio.timeout(5):
        outcome = await task
    assert outcome.cause.startswith("guest powered off after SIGTERM")  # type: ignore[attr-defined]
    assert "process state T: sent SIGCONT" in outcome.cause  # type: ignore[attr-defined]


async def test_a_silent_vmm_is_stopped_within_the_grace_period() -> None:
    """A VMM that never answers the power button (it hangs): stopped hard, within grace."""
    vmm = FakeVmm("ignore-quit", step_timeout=5.0)
    vmm.hang_button = True
    sup = Supervisor(vmm, grace_s=6)
    task = await started(sup)
    pid = vmm.pid
    began = time.monotonic()
    sup.request_stop("SIGTERM")
    with pytest.raises(GraceExpiredError) as info:
        async with asyncio.timeout(15):
            await task
    took = time.monotonic() - began
    assert took < 6.0, took
    assert "did not answer the power button within 3 s after SIGTERM" in str(info.value)
    assert not alive(pid)


async def test_cancelled_supervisor_stops_the_vmm() -> None:
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=30)
    task = await started(sup)
    pid = vmm.pid
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    assert "stop" in vmm.calls and "power_button" not in vmm.calls
    assert not alive(pid)


async def test_stop_before_start_never_spawns() -> None:
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=30)
    sup.request_stop("SIGTERM")
    outcome = await sup.run(CONFIG)
    assert outcome.exit_info is None and outcome.stop_requested
    assert vmm.calls == [] and vmm.pid is None


async def test_signal_handlers_route_sigterm_to_the_shutdown() -> None:
    vmm = FakeVmm()
    sup = Supervisor(vmm, grace_s=10)
    sup.install_signal_handlers()
    try:
        task = await started(sup)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            outcome = await task
    finally:
        sup.remove_signal_handlers()
    assert outcome.cause == "guest powered off after SIGTERM"  # type: ignore[attr-defined]

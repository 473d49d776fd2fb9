"""The VMM liveness check (launcher.liveness): on request, cached, bounded, with a real
stopped process for the ``T`` state and a ping that never answers for a silent VMM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from hypervisor.errors import HypervisorError
from hypervisor.machine import VmState
from launcher.liveness import Liveness, process_state, thaw


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Vmm:
    """The part of the Hypervisor protocol the check reads, around a real process."""

    proc: subprocess.Popen[bytes]
    kind: str = "qemu"
    state: VmState = VmState.RUNNING
    answer: str = "yes"  # yes, never, error
    pings: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    async def ping(self) -> None:
        self.pings.append(0)
        if self.answer == "never":
            await asyncio.sleep(3600)
        if self.answer == "error":
            raise HypervisorError("QMP connection closed")


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield Vmm(proc)
    finally:
        proc.kill()
        proc.wait(5)


def test_process_state_reads_proc(vmm: Vmm) -> None:
    assert process_state(vmm.pid) in ("R", "S")
    os.kill(vmm.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(100):
            if process_state(vmm.pid) == "T":
                break
            time.sleep(0.01)
        assert process_state(vmm.pid) == "T"
    finally:
        os.kill(vmm.proc.pid, signal.SIGCONT)
    assert process_state(None) is None
    assert process_state(2**22 + 7) is None


async def test_answering_vmm_is_responsive_and_the_verdict_is_cached(vmm: Vmm) -> None:
    clock = Clock()
    live = Liveness(lambda: vmm, clock=clock)  # type: ignore[arg-type,return-value]
    first = await live.check()
    assert first.responsive and first.reason is None
    await live.check()
    assert len(vmm.pings) == 1  # within MAX_AGE_S: no second ping
    clock.now += 2.5
    await live.check()
    assert len(vmm.pings) == 2


async def test_concurrent_requests_share_one_check(vmm: Vmm) -> None:
    vmm.answer = "never"
    live = Liveness(lambda: vmm, ping_timeout_s=0.2)  # type: ignore[arg-type,return-value]
    verdicts = await asyncio.gather(*(live.check() for _ in range(20)))
    assert len(vmm.pings) == 1
    assert all(not v.responsive for v in verdicts)


async def test_stopped_vmm_is_unresponsive_at_once_and_unhealthy_after_the_bound(
    vmm: Vmm, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    live = Liveness(lambda: vmm, clock=clock, unhealthy_after_s=30)  # type: ignore[arg-type,return-value]
    os.kill(vmm.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.05)
        with caplog.at_level(logging.INFO, logger="launcher.liveness"):
            verdict = await live.check()
            assert not verdict.responsive and vmm.pings == []  # /proc said so: no ping
            assert f"(pid {vmm.pid}) is stopped (process state T" in str(verdict.reason)
            assert live.healthy(verdict)
            clock.now += 29
            assert live.healthy(await live.check())
            clock.now += 2
            assert not live.healthy(await live.check())
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # logged once per spell, not per check
        assert thaw(vmm) == "T"  # type: ignore[arg-type]
        clock.now += 3
        await asyncio.sleep(0.05)
        with caplog.at_level(logging.INFO, logger="launcher.liveness"):
            again = await live.check()
        assert again.responsive and live.healthy(again)
        assert any(r.getMessage().startswith("the VMM answers again") for r in caplog.records)
    finally:
        os.kill(vmm.proc.pid, signal.SIGCONT)


async def test_silent_vmm_is_unresponsive_after_the_ping_timeout(vmm: Vmm) -> None:
    vmm.answer = "never"
    live = Liveness(lambda: vmm, ping_timeout_s=0.3)  # type: ignore[arg-type,return-value]
    loop = asyncio.get_running_loop()
    began = loop.time()
    verdict = await live.check()
    assert 0.25 < loop.time() - began < 1.5
    assert "did not answer a ping within 0.3 s" in str(verdict.reason)


async def test_nothing_to_check_before_the_vm_runs_or_after_it_ended(vmm: Vmm) -> None:
    vmm.answer = "error"
    live = Liveness(lambda: vmm, max_age_s=0)  # type: ignore[arg-type,return-value]
    vmm.state = VmState.RUNNING
    assert "failed a ping" in str((await live.check()).reason)
    vmm.state = VmState.SHUTDOWN
    assert (await live.check()).responsive and len(vmm.pings) == 1
    assert (await Liveness(lambda: None).check()).responsive


async def test_a_probe_never_waits_for_a_slow_ping(vmm: Vmm) -> None:
    """/healthz (wait 0) answers from the last verdict while a slow ping is out (a probe's
    timeout must not decide liveness); the next request after it timed out sees it."""
    live = Liveness(lambda: vmm, ping_timeout_s=0.6, max_age_s=0)  # type: ignore[arg-type,return-value]
    assert (await live.check()).responsive  # answered
    vmm.answer = "never"
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert (await live.check(wait_s=0)).responsive  # the last verdict, at once
    assert (await live.check(wait_s=0.2)).responsive  # the same check, still out
    assert loop.time() - began < 0.4
    await asyncio.sleep(0.6)  # the ping timed out meanwhile
    assert not (await live.check(wait_s=0)).responsive
    assert len(vmm.pings) == 3  # the first check, the slow one, and a new one now

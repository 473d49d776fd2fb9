"""Is the VMM still answering? The liveness check behind ``/readyz`` and ``/healthz``.

Used by the status server (:mod:`launcher.status.server`: every ``/readyz`` and
``/healthz`` request awaits :meth:`Liveness.check`) and by the supervisor
(:func:`process_state` and :func:`thaw` when a stop is requested). It costs nothing while
nobody asks: there is no timer; a check runs when a probe asks and its verdict is reused
for :data:`MAX_AGE_S` seconds (concurrent requests share one check).

A check, while the VM is Running or Paused:

1. reads the VMM's process state from ``/proc/<pid>/stat`` (one small read): ``T``
   (stopped by SIGSTOP/SIGTSTP) or ``t`` (stopped by a tracer) is unresponsive at once;
2. otherwise pings the VMM (:meth:`~hypervisor.base.Hypervisor.ping`: QMP
   ``query-status`` / ``vmm.ping``) bounded by :data:`PING_TIMEOUT_S`; no answer in
   time, or an error while the VM is still live, is unresponsive.

So a ``/readyz`` request fails at most ``MAX_AGE_S + PING_TIMEOUT_S`` (4 s) after the
VMM froze, with the reason (at once when it is stopped: no ping). It waits for the check
(at most the 2 s ping); a probe whose own timeout is shorter counts that as not ready,
which is the right answer. ``/healthz`` (what a liveness probe restarts the container
on) never waits for a ping (``check(wait_s=0)``: the last verdict, a new check started
for the next request), so a probe timeout cannot restart the pod early; it fails only
once the VMM has stayed unresponsive for :data:`UNHEALTHY_AFTER_S` (30 s), counted from
the first check that found it so; one answer resets it. Transitions are logged
once each (``vmm-unresponsive`` warning, ``vmm-responsive`` info).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypervisor.base import Hypervisor
from hypervisor.errors import HypervisorError
from hypervisor.machine import VmState
from launcher.privsep import vmm

__all__ = [
    "Liveness",
    "Verdict",
    "process_state",
    "thaw",
    "PING_TIMEOUT_S",
    "MAX_AGE_S",
    "UNHEALTHY_AFTER_S",
]

log = logging.getLogger(__name__)

#: How long the VMM gets to answer a ping.
PING_TIMEOUT_S = 2.0
#: How long a verdict is reused before a request runs a new check.
MAX_AGE_S = 2.0
#: How long the VMM must stay unresponsive before ``/healthz`` fails.
UNHEALTHY_AFTER_S = 30.0

_LIVE = frozenset({VmState.RUNNING, VmState.PAUSED})
_STOPPED = frozenset({"T", "t"})


def process_state(pid: int | None, proc: Path = Path("/proc")) -> str | None:
    """The one-letter state of process ``pid`` (``R``, ``S``, ``T``…), None if it is gone."""
    if pid is None:
        return None
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :]  # "pid (comm) S ...": comm may hold spaces and ")"
    return rest[:1] or None


def thaw(hypervisor: Hypervisor) -> str | None:
    """SIGCONT the VMM if it is stopped (state ``T``/``t``); returns the state it had then."""
    pid = hypervisor.pid
    state = process_state(pid)
    if pid is None or state not in _STOPPED:
        return None
    log.warning(
        "the %s VMM (pid %d) was stopped (process state %s); sending SIGCONT",
        hypervisor.kind,
        pid,
        state,
        extra={"event": "vmm-thawed", "pid": pid},
    )
    with contextlib.suppress(ProcessLookupError, PermissionError):
        vmm.kill(pid, signal.SIGCONT)  # through the helper for a non-root VMM
    return state


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's result: ``reason`` is None while the VMM answers (or there is none yet);
    ``since`` is when (monotonic) it was first found unresponsive in the current spell."""

    reason: str | None
    checked_at: float
    since: float | None = None

    @property
    def responsive(self) -> bool:
        """True unless the VMM was found frozen or silent."""
        return self.reason is None

    def unresponsive_for(self, now: float) -> float:
        """Seconds the VMM has been unresponsive (0 while it answers)."""
        return 0.0 if self.since is None else max(0.0, now - self.since)


class Liveness:
    """Checks the VMM on request; see the module docstring.

    ``hypervisor`` returns the run's adapter (None before there is one); the clock is
    monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        hypervisor: Callable[[], Hypervisor | None],
        *,
        ping_timeout_s: float = PING_TIMEOUT_S,
        max_age_s: float = MAX_AGE_S,
        unhealthy_after_s: float = UNHEALTHY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hypervisor = hypervisor
        self.ping_timeout_s = ping_timeout_s
        self.max_age_s = max_age_s
        self.unhealthy_after_s = unhealthy_after_s
        self._clock = clock
        self._last: Verdict | None = None
        self._running: asyncio.Task[Verdict] | None = None

    async def check(self, wait_s: float | None = None) -> Verdict:
        """The current verdict: the cached one if fresh, else a new check (shared).

        ``wait_s`` bounds how long the caller waits for a new check (None: until it is
        done); past it the last verdict is returned (responsive when there is none yet)
        and the check goes on for the next caller (``/healthz`` passes 0).
        """
        last = self._last
        if last is not None and self._clock() - last.checked_at < self.max_age_s:
            return last
        if self._running is None:
            self._running = asyncio.create_task(self._check(), name="vmm-liveness")
        if wait_s is None:
            return await asyncio.shield(self._running)
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(self._running)
        except TimeoutError:
            return last if last is not None else Verdict(None, self._clock())

    def healthy(self, verdict: Verdict) -> bool:
        """False once the VMM has been unresponsive for ``unhealthy_after_s``."""
        return verdict.unresponsive_for(self._clock()) < self.unhealthy_after_s

    async def close(self) -> None:
        """Cancel a check still running (the status server closes)."""
        task, self._running = self._running, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check(self) -> Verdict:
        try:
            reason = await self._probe()
            now = self._clock()
            previous = self._last
            since = None
            if reason is not None:
                since = previous.since if previous is not None and previous.since else now
                if previous is None or previous.since is None:
                    log.warning(
                        "the VMM is not responding: %s", reason, extra={"event": "vmm-unresponsive"}
                    )
            elif previous is not None and previous.since is not None:
                log.info(
                    "the VMM answers again after %.1f s",
                    now - previous.since,
                    extra={"event": "vmm-responsive"},
                )
            self._last = Verdict(reason, now, since)
            return self._last
        finally:
            self._running = None

    async def _probe(self) -> str | None:
        hv = self._hypervisor()
        if hv is None or hv.state not in _LIVE:
            return None  # nothing to check: HypervisorRunning says why
        pid = hv.pid
        state = process_state(pid)
        if state in _STOPPED:
            return (
                f"the {hv.kind} VMM (pid {pid}) is stopped (process state {state}: "
                "SIGSTOP or a tracer); it cannot run the guest"
            )
        try:
            async with asyncio.timeout(self.ping_timeout_s):
                await hv.ping()
        except TimeoutError:
            return (
                f"the {hv.kind} VMM (pid {pid}) did not answer a ping within "
                f"{self.ping_timeout_s:g} s"
            )
        except HypervisorError as err:
            if hv.state not in _LIVE:
                return None  # it is going away; its exit is reported by the supervisor
            return f"the {hv.kind} VMM (pid {pid}) failed a ping: {err}"
        return None

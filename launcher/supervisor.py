"""Supervision of one VMM: start, wait, the shutdown sequence, PID-1 reaping, termination log.

Called by the composition root (:mod:`launcher.run`), which creates one
:class:`Supervisor` around a :class:`~hypervisor.base.Hypervisor` adapter and runs
:meth:`Supervisor.run` as a task of its TaskGroup. The supervisor talks to the VMM only
through the protocol.

How a run ends (and the exit code the composition root derives from it):

* the VMM exits on its own: noticed at once (the adapter awaits the process, no polling).
  A clean guest power-off (terminal state Shutdown) returns an :class:`Outcome` (exit 0);
  anything else (crash, kill, guest panic) raises :class:`~hypervisor.errors.HypervisorError`
  naming the cause (exit 4);
* SIGTERM or SIGINT (:meth:`Supervisor.request_stop`): the whole stop fits in the grace
  period (the spec's ``terminationGracePeriodSeconds``, counted from the first signal,
  the time kubelet allows before its SIGKILL). A VMM found stopped (process state ``T``)
  is sent SIGCONT first; the ACPI power button is pressed (bounded: a VMM that does not
  answer it is stopped hard at once), then the guest gets the grace period minus a
  reserve (:func:`hard_stop_reserve`: a quarter of it, at most 5 s) to power off (exit 0).
  If it does not, the adapter's ``stop()`` makes the VMM quit (QMP ``quit`` /
  ``vmm.shutdown``), then SIGTERM, then SIGKILL, each step bounded, the whole bounded by
  what is left of the grace period (then the supervisor SIGKILLs the VMM itself), and
  :class:`~launcher.errors.GraceExpiredError` is raised (exit 5) with the true reason
  (the guest's time ran out; the VMM did not answer; a second signal). The same signal
  repeated within :data:`REPEAT_WINDOW_S` is the same request; a later second signal
  skips the rest of the grace period;
* the supervisor task is cancelled (another task of the run failed): the VMM is stopped
  hard (bounded) and the cancellation propagates.

:class:`ChildReaper` reaps zombies when the launcher is PID 1 (see its docstring for why
it never steals asyncio's own children), :func:`raise_memlock` lifts ``RLIMIT_MEMLOCK``
for VFIO, :func:`write_termination_log` writes the message kubelet shows as the
container's termination reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor.base import ExitInfo, Hypervisor
from hypervisor.errors import HypervisorError
from hypervisor.machine import MachineConfig, VmState
from launcher.errors import GraceExpiredError
from launcher.liveness import thaw
from launcher.phase import Phase
from launcher.privsep import vmm

__all__ = [
    "Supervisor",
    "Outcome",
    "ChildReaper",
    "raise_memlock",
    "raise_nofile",
    "write_termination_log",
    "zombie_children",
    "DEFAULT_TERMINATION_LOG",
    "TERMINATION_LOG_LIMIT",
    "REPEAT_WINDOW_S",
    "BUTTON_TIMEOUT_S",
    "hard_stop_reserve",
]

log = logging.getLogger(__name__)

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
#: kubelet reads at most 4096 bytes of the termination message.
TERMINATION_LOG_LIMIT = 4096
#: A signal repeated within this many seconds of the first is the same stop request
#: (``kill`` run twice, a process group signalled twice), not "hurry up".
REPEAT_WINDOW_S = 1.0
#: How long the VMM gets to take the power button press; no answer: it is stopped hard.
BUTTON_TIMEOUT_S = 3.0
#: The least time the hard stop gets, even when the grace period is (nearly) over.
MIN_HARD_STOP_S = 1.0


def hard_stop_reserve(grace_s: float) -> float:
    """The end of the grace period kept for the hard stop and cleanup: a quarter, at most 5 s."""
    return min(5.0, grace_s / 4)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A run that ended well: ``cause`` is one sentence, ``exit_info`` the VMM's exit (None
    when the stop request came before the VMM was started)."""

    cause: str
    exit_info: ExitInfo | None = None
    stop_requested: bool = False


class Supervisor:
    """Runs one VM through ``hypervisor`` and decides how the run ended.

    ``grace_s`` is the termination grace period; ``stop_timeout_s`` bounds the adapter's
    whole hard-stop sequence (quit → SIGTERM → SIGKILL; each adapter bounds its own steps);
    ``exit_timeout_s`` bounds waiting for the process exit after a hard stop; ``on_phase``
    is called with each new :attr:`phase` (the composition root mirrors it for the status
    server).
    """

    def __init__(
        self,
        hypervisor: Hypervisor,
        *,
        grace_s: float = 30.0,
        stop_timeout_s: float = 45.0,
        exit_timeout_s: float = 10.0,
        on_phase: Callable[[Phase], None] | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.grace_s = grace_s
        self.stop_timeout_s = stop_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.stop_reason: str | None = None
        self._on_phase = on_phase
        self._phase = Phase.STARTING
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._signals: list[int] = []
        self._stop_at: float | None = None  # monotonic time of the first stop request
        self._hurried: str | None = None  # how the second request came, for the reason

    @property
    def phase(self) -> Phase:
        """STARTING (nothing spawned yet), HYPERVISOR, RUNNING, STOPPING or EXITED."""
        return self._phase

    @phase.setter
    def phase(self, value: Phase) -> None:
        self._phase = value
        if self._on_phase is not None:
            self._on_phase(value)

    # -- stop requests -------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Start the graceful shutdown (first call) or skip the rest of the grace (second)."""
        now = time.monotonic()
        if self._stop.is_set():
            since = now - (self._stop_at or now)
            if since < REPEAT_WINDOW_S or self._hurry.is_set():
                log.info(
                    "%s again %.2f s after the stop request: already stopping",
                    reason,
                    since,
                    extra={"event": "stop-repeated"},
                )
                return
            log.warning(
                "second stop request (%s) %.1f s after the first: stopping the VM now",
                reason,
                since,
                extra={"event": "stop-hurried"},
            )
            self._hurried = f"a second {reason} came {since:.1f} s into the grace period"
            self._hurry.set()
            return
        self.stop_reason = reason
        self._stop_at = now
        log.info("stop requested: %s", reason, extra={"event": "stop-requested"})
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def install_signal_handlers(
        self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Route ``signals`` to :meth:`request_stop` on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
            self._signals.append(sig)

    def remove_signal_handlers(self) -> None:
        """Undo :meth:`install_signal_handlers`."""
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    # -- the run -------------------------------------------------------------------------

    async def run(self, config: MachineConfig) -> Outcome:
        """Start the VM, wait for its end or a stop request; see the module docstring."""
        hv = self.hypervisor
        if self._stop.is_set():
            self.phase = Phase.EXITED
            return Outcome(f"stopped by {self.stop_reason} before the VM started", None, True)
        self.phase = Phase.HYPERVISOR
        try:
            await hv.start(config)
        except asyncio.CancelledError:
            await self._hard_stop()
            raise
        self.phase = Phase.RUNNING
        log.info(
            "VM running",
            extra={"event": "vm-running", "hypervisor": hv.kind, "pid": hv.pid},
        )
        exit_task = asyncio.ensure_future(hv.wait())
        stop_task = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({exit_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if exit_task.done():
                return self._unrequested_exit(exit_task.result())
            return await self._shutdown(exit_task)
        except asyncio.CancelledError:
            await self._hard_stop()
            raise
        finally:
            stop_task.cancel()
            if not exit_task.done():
                exit_task.cancel()
            self.phase = Phase.EXITED

    def _unrequested_exit(self, info: ExitInfo) -> Outcome:
        if info.state is VmState.SHUTDOWN:
            log.info("the VM ended: %s", info.cause, extra={"event": "vm-exited"})
            return Outcome(info.cause, info)
        raise HypervisorError(f"the {self.hypervisor.kind} VMM ended unexpectedly: {info.cause}")

    async def _shutdown(self, exit_task: asyncio.Future[ExitInfo]) -> Outcome:
        hv = self.hypervisor
        self.phase = Phase.STOPPING
        reason = self.stop_reason or "a stop request"
        deadline = (self._stop_at or time.monotonic()) + self.grace_s
        reserve = hard_stop_reserve(self.grace_s)
        frozen = thaw(hv)  # a stopped VMM can take neither the button nor a quit
        note = f" (the VMM was stopped, process state {frozen}: sent SIGCONT)" if frozen else ""
        pressed, silent = await self._press(exit_task, deadline - reserve, note)
        if pressed:
            hurry = asyncio.ensure_future(self._hurry.wait())
            waiters: set[asyncio.Future[Any]] = {exit_task, hurry}
            try:
                await asyncio.wait(
                    waiters,
                    timeout=max(0.0, deadline - reserve - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                hurry.cancel()
        if exit_task.done():
            info = exit_task.result()
            if info.state is VmState.SHUTDOWN:
                cause = f"{info.cause} after {reason}{note}"
                log.info("the VM ended: %s", cause, extra={"event": "vm-exited"})
                return Outcome(cause, info, True)
            raise HypervisorError(
                f"the {hv.kind} VMM failed while shutting down after {reason}: {info.cause}"
            )
        hurried = self._hurried  # a second signal that cut the guest's time short
        started = time.monotonic()
        thaw(hv)  # stopped again meanwhile? SIGTERM would only stay pending
        budget = max(MIN_HARD_STOP_S, deadline - reserve / 2 - started)
        if silent is not None:  # it will not answer a quit either: SIGKILL comes soon
            budget = MIN_HARD_STOP_S
        await self._hard_stop(budget)
        stopped = await self._exit_info(exit_task)
        took = time.monotonic() - started
        waited = "" if stopped is None else f" ({stopped.cause})"
        if silent is not None:
            raise GraceExpiredError(
                f"{silent} after {reason}{note}, so it was stopped hard in {took:.1f} s{waited}"
            )
        if not pressed:
            raise GraceExpiredError(
                f"the guest could not be asked to power off after {reason}{note}, so the "
                f"{hv.kind} VMM was stopped{waited}"
            )
        if hurried is not None:
            raise GraceExpiredError(
                f"{hurried} of {self.grace_s:g} s, so the {hv.kind} VMM was stopped "
                f"without waiting for the guest, in {took:.1f} s{waited}"
            )
        raise GraceExpiredError(
            f"the guest did not power off within the {self.grace_s:g} s grace period after "
            f"{reason}{note}; the {hv.kind} VMM was stopped in {took:.1f} s{waited}"
        )

    async def _press(
        self, exit_task: asyncio.Future[ExitInfo], guest_until: float, note: str
    ) -> tuple[bool, str | None]:
        """Press the power button (bounded); (pressed, why the VMM is silent or None)."""
        hv = self.hypervisor
        if hv.state is not VmState.RUNNING:
            log.warning("the VM is %s, so the power button cannot be pressed", hv.state)
            return False, None
        limit = max(0.1, min(BUTTON_TIMEOUT_S, guest_until - time.monotonic()))
        try:
            async with asyncio.timeout(limit):
                await hv.power_button()
        except TimeoutError:
            silent = f"the {hv.kind} VMM did not answer the power button within {limit:g} s"
            log.warning("%s%s; stopping it hard", silent, note)
            return False, silent
        except HypervisorError as err:
            log.warning("could not press the power button: %s", err)
            # Often the VMM is already going away (e.g. Ctrl-C reached its process
            # group too): give its exit a moment to arrive before stopping it hard.
            await asyncio.wait({exit_task}, timeout=self.exit_timeout_s / 5)
            return False, None
        log.info(
            "pressed the power button; waiting up to %.1f s of the %g s grace period "
            "for the guest to power off",
            max(0.0, guest_until - time.monotonic()),
            self.grace_s,
            extra={"event": "power-button", "grace_s": self.grace_s},
        )
        return True, None

    async def _hard_stop(self, budget_s: float | None = None) -> None:
        """The adapter's quit → SIGTERM → SIGKILL sequence, bounded as a whole by
        ``budget_s`` (default ``stop_timeout_s``); past it the VMM is SIGKILLed here."""
        budget = self.stop_timeout_s if budget_s is None else min(budget_s, self.stop_timeout_s)
        try:
            async with asyncio.timeout(budget):
                await self.hypervisor.stop()
        except (TimeoutError, HypervisorError) as err:
            pid = self.hypervisor.pid
            log.warning(
                "the VMM (pid %s) did not stop within %.1f s (%s); sending SIGKILL",
                pid,
                budget,
                err or "timed out",
                extra={"event": "vmm-killed"},
            )
            if pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    vmm.kill(pid, signal.SIGKILL)  # through the helper for a non-root VMM

    async def _exit_info(self, exit_task: asyncio.Future[ExitInfo]) -> ExitInfo | None:
        try:
            async with asyncio.timeout(self.exit_timeout_s):
                return await asyncio.shield(exit_task)
        except (TimeoutError, HypervisorError):
            return None


# --------------------------------------------------------------------------- PID 1


def zombie_children(parent: int | None = None, proc: Path = Path("/proc")) -> list[int]:
    """Pids of zombie processes whose parent is ``parent`` (default: this process)."""
    me = os.getpid() if parent is None else parent
    out: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it went away meanwhile
        # "pid (comm) S ppid ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2 and fields[0] == "Z" and int(fields[1]) == me:
            out.append(int(entry.name))
    return out


class ChildReaper:
    """Reaps zombie children that nobody else waits for (the launcher as PID 1).

    asyncio's child watchers (the threaded one in Python 3.11, the pidfd one later) and
    ``subprocess.run`` each wait for one specific pid right after it exits; reaping with
    ``waitpid(-1)`` would steal those results (``Process.wait()`` would then report a
    wrong exit status). So this reaper never waits for "any child": it lists this
    process's zombie children (``/proc/*/stat``: state ``Z``, parent = us) and reaps one
    only after it has stayed a zombie for ``min_age_s`` — a child someone waits for is
    collected within milliseconds, an orphan re-parented to PID 1 stays a zombie forever.
    Scans run on SIGCHLD and every ``interval_s`` (neither default asyncio watcher uses
    SIGCHLD, so the handler takes nothing away from them). Every exit raises SIGCHLD, so
    the periodic scan is only a safety net: 60 s, so an idle PID-1 launcher is not woken
    every few seconds (issue 17: no timer under 10 s while idle). The composition root starts
    :meth:`run` only when ``os.getpid() == 1`` (or when forced for tests).
    """

    def __init__(self, *, min_age_s: float = 2.0, interval_s: float = 60.0) -> None:
        self.min_age_s = min_age_s
        self.interval_s = interval_s
        self.reaped: list[tuple[int, int]] = []  # (pid, raw wait status), bounded below
        self._seen: dict[int, float] = {}
        self._wake = asyncio.Event()

    def scan(
        self, now: float | None = None, list_zombies: Callable[[], list[int]] | None = None
    ) -> int:
        """Reap the zombies old enough; returns how many were reaped."""
        now = time.monotonic() if now is None else now
        zombies = (list_zombies or zombie_children)()
        current = set(zombies)
        for pid in list(self._seen):
            if pid not in current:
                del self._seen[pid]  # someone else reaped it
        count = 0
        for pid in zombies:
            first = self._seen.setdefault(pid, now)
            if now - first < self.min_age_s:
                continue
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got, status = 0, 0
            self._seen.pop(pid, None)
            if got == pid:
                count += 1
                self.reaped.append((pid, status))
                del self.reaped[:-64]
                log.info("reaped orphaned child %d", pid, extra={"event": "reaped", "pid": pid})
        return count

    async def run(self) -> None:
        """Scan on SIGCHLD and periodically until cancelled."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._wake.set)
        log.info(
            "reaping orphaned children (pid %d)", os.getpid(), extra={"event": "reaper-started"}
        )
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._wake.wait()
                self._wake.clear()
                self.scan()
                if self._seen:  # come back once the youngest zombie is old enough
                    await asyncio.sleep(self.min_age_s)
                    self.scan()
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)


# --------------------------------------------------------------------------- limits, log


def raise_memlock() -> tuple[int, int]:
    """Raise RLIMIT_MEMLOCK to unlimited, or to the hard limit when that is not allowed.

    VFIO pins all guest memory, so the VMM (which inherits the limit) needs it. Returns
    the new (soft, hard) pair.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    inf = resource.RLIM_INFINITY
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (inf, inf))
    except (ValueError, OSError) as err:
        log.warning("cannot lift RLIMIT_MEMLOCK to unlimited (%s); using the hard limit", err)
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        except (ValueError, OSError) as err2:
            log.warning("cannot raise RLIMIT_MEMLOCK to %s: %s", hard, err2)
    new = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    log.info(
        "RLIMIT_MEMLOCK for VFIO: %s -> %s",
        _limit(soft),
        _limit(new[0]),
        extra={"event": "memlock"},
    )
    return new


#: The soft RLIMIT_NOFILE the launcher raises itself to (never above the hard limit).
NOFILE_TARGET = 65536


def raise_nofile(target: int = NOFILE_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most ``target``); returns it.

    Raising a soft limit up to the hard one needs no privilege. More descriptors keep the
    status endpoint's connection cap (launcher.status.conncap) far from anything else the
    launcher needs; ``target`` keeps the VMM (which inherits it) from getting a huge table.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise RLIMIT_NOFILE to %d: %s", want, err)
            return soft
        log.debug("RLIMIT_NOFILE %s -> %d", _limit(soft), want)
        return want
    return soft


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def write_termination_log(path: Path | None, message: str) -> bool:
    """Write ``message`` (at most 4096 bytes) to ``path``; False when skipped or failed.

    A missing directory (no kubelet, e.g. on a laptop) is silently skipped; a write
    error is logged, never fatal (the exit code still tells what happened).
    """
    if path is None:
        return False
    if not path.parent.is_dir():
        log.debug("no termination log: %s does not exist", path.parent)
        return False
    data = message.strip().encode()[:TERMINATION_LOG_LIMIT]
    try:
        with open(path, "wb") as f:
            f.write(data + (b"\n" if len(data) < TERMINATION_LOG_LIMIT else b""))
    except OSError as err:
        log.warning("cannot write the termination log %s: %s", path, err)
        return False
    return True

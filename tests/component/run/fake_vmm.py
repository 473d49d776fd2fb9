"""A ``Hypervisor`` around a real child process that behaves like a VMM, for supervisor tests.

The child is a small Python program: it "boots", then exits 0 when its power button is
pressed (SIGUSR1) unless told to ignore it, exits 0 on ``quit`` (SIGUSR2), and dies from
SIGTERM/SIGKILL like any process. The adapter follows the real adapters' contract
(``hypervisor.base``: Created → Running → Shutdown/Failed, ``stop()`` = quit → SIGTERM →
SIGKILL each bounded, ``wait()`` resolves at the process exit without polling);
``tests/component/run/test_supervisor.py`` checks it is a ``Hypervisor``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from hypervisor.base import ExitInfo, LifecycleEvent, advance, require
from hypervisor.machine import MachineConfig, NetDevice, VdpaDevice, VfioDevice, VmState
from launcher.errors import HypervisorError

CHILD = """
import signal, sys, time
mode = sys.argv[1]
def button(*_):
    if mode == "normal":
        sys.exit(0)
signal.signal(signal.SIGUSR1, button)
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(0) if mode != "ignore-quit" else None)
if mode == "ignore-quit":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("booted", flush=True)
for _ in range(600):
    time.sleep(0.1)
sys.exit(3)
"""


class FakeVmm:
    """``mode``: ``normal``, ``ignore-button`` or ``ignore-quit`` (also ignores SIGTERM)."""

    def __init__(self, mode: str = "normal", step_timeout: float = 1.0) -> None:
        self.mode = mode
        self.step_timeout = step_timeout
        self._state = VmState.CREATED
        self._proc: asyncio.subprocess.Process | None = None
        self._exit: asyncio.Task[ExitInfo] | None = None
        self.stop_requested = False
        self.hang_button = False  # power_button() never returns (a VMM that does not answer)
        self.calls: list[str] = []

    @property
    def kind(self) -> str:
        return "fake"

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, config: MachineConfig) -> None:
        require("start", self._state)
        self.calls.append("start")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, self.mode, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        async with asyncio.timeout(10):
            line = await self._proc.stdout.readline()
        if line.strip() != b"booted":
            raise HypervisorError(f"fake VMM did not boot: {line!r}")
        self._exit = asyncio.create_task(self._watch(), name="fake-wait")
        self._state = advance(self._state, VmState.RUNNING)

    async def _watch(self) -> ExitInfo:
        assert self._proc is not None
        code = await self._proc.wait()
        if code == 0:
            cause = "stopped by the launcher" if self.stop_requested else "guest powered off"
            info = ExitInfo(code, cause, VmState.SHUTDOWN)
        elif code < 0:
            info = ExitInfo(
                code, f"fake was killed by {signal.Signals(-code).name}", VmState.FAILED, -code
            )
        else:
            info = ExitInfo(code, f"fake exited with code {code}", VmState.FAILED)
        self._state = advance(self._state, info.state)
        return info

    async def power_button(self) -> None:
        require("power_button", self._state)
        self.calls.append("power_button")
        assert self._proc is not None
        if self.hang_button:
            await asyncio.sleep(3600)
        self._proc.send_signal(signal.SIGUSR1)

    async def ping(self) -> None:
        require("ping", self._state)

    async def stop(self) -> None:
        self.calls.append("stop")
        if self._proc is None or self._exit is None or self._exit.done():
            return
        self.stop_requested = True
        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGKILL):
            if self._proc.returncode is None:
                self.calls.append(f"send {sig.name}")
                self._proc.send_signal(sig)
            try:
                async with asyncio.timeout(self.step_timeout):
                    await asyncio.shield(self._exit)
                return
            except TimeoutError:
                continue
        raise HypervisorError("fake VMM did not exit after SIGKILL")

    async def wait(self) -> ExitInfo:
        if self._exit is None:
            raise HypervisorError("never started")
        return await asyncio.shield(self._exit)

    async def _no_events(self) -> AsyncIterator[LifecycleEvent]:
        for _ in ():
            yield _

    def events(self) -> AsyncIterator[LifecycleEvent]:
        return self._no_events()

    async def counters(self) -> dict[str, dict[str, int]]:
        return {}

    async def add_net(self, dev: NetDevice, fds: Sequence[int] = ()) -> None:
        raise HypervisorError("not supported by the fake")

    async def add_vfio(self, dev: VfioDevice) -> None:
        raise HypervisorError("not supported by the fake")

    async def add_vdpa(self, dev: VdpaDevice) -> None:
        raise HypervisorError("not supported by the fake")

    async def remove_device(self, device_id: str) -> None:
        raise HypervisorError("not supported by the fake")

    async def set_link(self, device_id: str, up: bool) -> None:
        raise HypervisorError("not supported by the fake")

"""Starts ``virt-launcher run`` in a simulated pod: the launcher start the e2e tests share.

:func:`start` links the test guest's kernel into ``<workdir>/volumes/kernel``, writes the
spec (or takes one already projected), and starts ``python -m launcher run`` inside the
pod netns (``ip netns exec``) exactly as the pod entrypoint, under TCG with its state
dir, volumes dir and termination log in ``workdir``. The returned :class:`Launcher`
reads the guest's serial console from the launcher's stdout (``ConsoleReader``), has
its JSON log (stderr) in a file, and stops it bounded (SIGTERM, then SIGKILL, then any
QEMU it left); used as a context manager it stops the launcher on exit. Used by the
modules of tests/e2e that run the launcher with the test guest; the pods come from
:func:`testbed.harness.simulated_pod` or :class:`testbed.netns.Topology`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed.guest.build import GuestImage
from testbed.guest.console import ConsoleReader

__all__ = ["Launcher", "start", "host_pid_of_qemu", "kill_qemu", "REPO", "EXIT_TIMEOUT_S"]

REPO = Path(__file__).resolve().parents[1]
#: How long :meth:`Launcher.stop` waits after SIGTERM before SIGKILL.
EXIT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Launcher:
    """One ``virt-launcher run`` subprocess in a pod netns."""

    proc: subprocess.Popen[bytes]
    console: ConsoleReader
    stderr_path: Path
    termination_log: Path
    state_dir: Path
    listen: str | None = None  # --status-listen, if given

    def log(self) -> str:
        """Its stderr so far (JSON lines)."""
        return self.stderr_path.read_text()

    def records(self) -> list[dict[str, Any]]:
        """Its JSON log records so far."""
        return [json.loads(ln) for ln in self.log().splitlines() if ln.startswith("{")]

    def url(self, path: str) -> str:
        """``path`` on its status endpoint."""
        if self.listen is None:
            raise AssertionError("the launcher was started without --status-listen")
        return f"http://{self.listen}{path}"

    def qemu_pid(self) -> int:
        """QEMU's host pid, found by its QMP socket path in the state dir (the pid in the
        log is the launcher's own pid namespace's, wrong when it runs as PID 1)."""
        pid = host_pid_of_qemu(self.state_dir)
        if pid is None:
            raise AssertionError(f"no QEMU process for {self.state_dir}")
        return pid

    def wait(self, timeout: float) -> int:
        """Its exit code; fails the test with its log's tail unless it exits in time."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.log()[-3000:]
            raise AssertionError(f"the launcher did not exit within {timeout} s:\n{tail}") from None

    def stop(self) -> None:
        """Bounded teardown: SIGTERM, then SIGKILL for the launcher and any QEMU left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        kill_qemu(self)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    workdir: Path,
    guest: GuestImage,
    netns: str,
    spec: str | bytes | Path,
    *,
    run: int | None = None,
    listen: str | None = None,
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
    vmm_user: str | None = "keep",
    env: Mapping[str, str] | None = None,
) -> Launcher:
    """Start ``virt-launcher run`` in ``netns`` with the guest's kernel and ``spec``.

    ``spec``: the spec's text (written to ``workdir/vm.yaml``) or the path of a spec file
    already in place (a projected volume). ``run`` numbers the log files of a restarted
    launcher (``launcher-<run>.err``, ``console-<run>.log``; else ``launcher.err``,
    ``console.log``). ``listen``: ``--status-listen``. ``prefix`` goes before ``ip netns
    exec``; ``env`` is added to the environment. ``vmm_user``: ``--vmm-user`` (None: the
    default, uid 107, which cannot reach the guest kernel in the shared cache under
    /root; tests/e2e/test_privileges.py runs that way)."""
    volumes = workdir / "volumes" / "kernel"
    volumes.mkdir(parents=True, exist_ok=True)
    for name, src in (("vmlinuz", guest.kernel), ("initrd.gz", guest.initrd)):
        if not (volumes / name).exists():
            (volumes / name).symlink_to(src)
    if isinstance(spec, Path):
        spec_path = spec
    else:
        spec_path = workdir / "vm.yaml"
        spec_path.write_bytes(spec.encode() if isinstance(spec, str) else spec)
    suffix = "" if run is None else f"-{run}"
    stderr_path = workdir / f"launcher{suffix}.err"
    termination_log = workdir / "termination-log"
    argv = [
        *prefix, "ip", "netns", "exec", netns, sys.executable, "-m", "launcher", "run",
        "--spec", str(spec_path),
        "--state-dir", str(workdir / "state"),
        "--volumes-dir", str(workdir / "volumes"),
        "--termination-log", str(termination_log),
        "--accel", "tcg",
        *(["--vmm-user", vmm_user] if vmm_user is not None else []),
        *(["--status-listen", listen] if listen is not None else []),
        *extra,
    ]  # fmt: skip
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=None if env is None else {**os.environ, **env},
        )
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(workdir / f"console{suffix}.log"))
    return Launcher(proc, console, stderr_path, termination_log, workdir / "state", listen)


def host_pid_of_qemu(state_dir: Path) -> int | None:
    """The live QEMU started with ``state_dir`` (matched by its QMP socket path, or by its
    kernel under the volumes dir beside it when the QMP socket is passed as an fd), or
    None."""
    needles = (
        str(state_dir / "qemu" / "qmp.sock").encode(),
        f"{state_dir.parent}/volumes/".encode(),
    )
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"qemu-system") and any(n in cmdline for n in needles):
            return int(entry.name)
    return None


def kill_qemu(launcher: Launcher) -> None:
    """SIGKILL the launcher's QEMU if it still runs, and wait (bounded) until it is gone."""
    pid = host_pid_of_qemu(launcher.state_dir)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and host_pid_of_qemu(launcher.state_dir) == pid:
        time.sleep(0.1)

"""E2E: a launcher whose VM runs and whom nobody asks anything sleeps (issue 17).

The real launcher (bridge binding, the test guest under TCG, DHCPv4 + DHCPv6 + RA served
in process) runs until the guest holds both leases and the status endpoint has been used
once (so its HTTP side is loaded too); once the RA's initial adverts are over, every
thread's context switches are counted over ``WINDOW_S`` from ``/proc``. A periodic timer
shorter than 10 s fires at least twice in 21 s and wakes the event loop's thread each
time (``epoll_wait`` returns), so more than ``ALLOWED`` wakeups of the launcher fails the
test, naming the threads that woke. One wakeup is allowed for a stray packet from the
guest. This is what keeps polling from creeping back; bench/idle.py measures the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage

from .test_run_launcher import BOOT_TIMEOUT_S, POD, Launcher, launchers, pod, start

__all__ = ["launchers", "pod"]  # fixtures, imported for this module's tests

pytestmark = pytest.mark.timeout(150)

WINDOW_S = 21.0  # > 2 x 10 s: a timer under 10 s fires at least twice
ALLOWED = 1
RA_BURST_S = 14.0  # 3 initial adverts 4 s apart (dhcp.ra), from the servers' start
STATUS_PORT = 8189


def switches(pid: int) -> dict[str, int]:
    """Each live thread's voluntary + involuntary context switches, by ``tid:name``."""
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        count, name = 0, "?"
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Name:"):
                        name = line.split(None, 1)[1].strip()
                    elif "ctxt_switches:" in line:
                        count += int(line.split()[1])
        except FileNotFoundError:
            continue
        out[f"{tid}:{name}"] = count
    return out


def test_an_idle_launcher_arms_no_short_timer(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(tmp_path, guest, extra=("--status-listen", f"127.0.0.1:{STATUS_PORT}"))
    launchers.append(launcher)
    started = time.monotonic()
    launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    launcher.console.wait_for("LEASE6", BOOT_TIMEOUT_S)
    fetch = (
        "import urllib.request; "
        f"print(urllib.request.urlopen('http://127.0.0.1:{STATUS_PORT}/status', timeout=20)"
        ".status)"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", POD, sys.executable, "-c", fetch],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.stdout.strip() == "200", done.stderr
    time.sleep(max(2.0, RA_BURST_S - (time.monotonic() - started)))
    pid = launcher.proc.pid
    before = switches(pid)
    time.sleep(WINDOW_S)
    after = switches(pid)
    assert launcher.proc.poll() is None, "the launcher ended during the window"
    woke = {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}
    assert sum(woke.values()) <= ALLOWED, (
        f"an idle launcher woke {sum(woke.values())} times in {WINDOW_S:.0f} s: {woke} "
        "(a periodic timer or a polling loop?)"
    )

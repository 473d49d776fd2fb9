"""PID-1 duties with real processes: the orphan reaper, RLIMIT_MEMLOCK, the termination log."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.supervisor import (
    TERMINATION_LOG_LIMIT,
    ChildReaper,
    raise_memlock,
    write_termination_log,
    zombie_children,
)


def spawn_exiting(code: int) -> int:
    """A child that exits with ``code`` at once and that nobody waits for (a zombie)."""
    return os.posix_spawn("/bin/sh", ["sh", "-c", f"exit {code}"], dict(os.environ))


def wait_zombie(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid in zombie_children():
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never became a zombie child")


def test_zombie_orphan_is_reaped_only_after_min_age() -> None:
    pid = spawn_exiting(7)
    wait_zombie(pid)
    reaper = ChildReaper(min_age_s=1.0)
    now = time.monotonic()
    assert reaper.scan(now) == 0  # first sight: maybe someone is about to wait for it
    assert pid in zombie_children()
    assert reaper.scan(now + 1.1) == 1
    assert pid not in zombie_children()
    assert (pid, 7 << 8) in reaper.reaped


async def test_reaper_never_steals_an_asyncio_child_exit_status() -> None:
    reaper = ChildReaper(min_age_s=0.5, interval_s=0.05)
    task = asyncio.create_task(reaper.run())
    try:
        for code in (3, 5, 9):
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"sleep 0.2; exit {code}")
            async with asyncio.timeout(5):
                assert await proc.wait() == code
        orphan = spawn_exiting(4)
        for _ in range(100):  # SIGCHLD + the min age: reaped within about a second
            if any(pid == orphan for pid, _ in reaper.reaped):
                break
            await asyncio.sleep(0.05)
        assert (orphan, 4 << 8) in reaper.reaped
        assert all(pid == orphan for pid, _ in reaper.reaped)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
def memlock() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, before)


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def test_raise_memlock_lifts_as_far_as_allowed(memlock: tuple[int, int]) -> None:
    _, hard = memlock
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (min(4096, hard), hard))
    inf = resource.RLIM_INFINITY
    # Unlimited with CAP_SYS_RESOURCE (a privileged pod); else the hard limit (this
    # sandbox's root lacks the capability).
    expected = (inf, inf) if has_cap_sys_resource() else (hard, hard)
    assert raise_memlock() == expected
    assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == expected


def test_raise_memlock_unprivileged_falls_back_to_the_hard_limit(memlock: tuple[int, int]) -> None:
    _, hard = memlock
    script = (
        "import os, resource\n"
        f"resource.setrlimit(resource.RLIMIT_MEMLOCK, ({min(4096, hard)}, {hard}))\n"
        "from launcher.supervisor import raise_memlock\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "print(raise_memlock())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"({hard}, {hard})"


def test_termination_log_written_truncated_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert write_termination_log(path, "the qemu VMM ended unexpectedly: killed\n")
    assert path.read_text() == "the qemu VMM ended unexpectedly: killed\n"
    assert write_termination_log(path, "x" * 10000)
    assert len(path.read_bytes()) == TERMINATION_LOG_LIMIT
    missing = tmp_path / "no-such-dir" / "termination-log"
    assert not write_termination_log(missing, "ignored")
    assert not missing.parent.exists()
    assert not write_termination_log(None, "ignored")

"""/proc reads for /status agree with psutil (the library they replace) on a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from launcher.status import procfs


def test_numbers_match_psutil_for_a_live_child() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(32 << 20); time.sleep(30)"]
    )
    try:
        time.sleep(0.5)
        ours = procfs.read(child.pid)
        theirs = psutil.Process(child.pid)
        with theirs.oneshot():
            cpu = theirs.cpu_times()
            rss = theirs.memory_info().rss
            created = theirs.create_time()
        assert abs(ours.rss_bytes - rss) < (1 << 20)
        assert ours.rss_bytes > 32 << 20
        assert abs(ours.cpu_s - (cpu.user + cpu.system)) < 0.05
        assert abs(ours.started_at - created) < 0.05
    finally:
        child.kill()
        child.wait(10)


def test_a_gone_process_raises_process_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    with pytest.raises(procfs.ProcessGone):
        procfs.read(child.pid)


def test_own_process() -> None:
    ours = procfs.read(os.getpid())
    assert ours.rss_bytes > 0 and ours.started_at <= time.time()

"""The accelerator probe runs TCG and KVM side by side, gives KVM its budget, and never
leaves a QEMU behind: not when KVM hangs, not when the run is cancelled mid-probe.
QEMU is a shell script here that behaves per ``-accel`` and records its pid."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest

from hypervisor.qemu.probe import choose_accel

FAKE = """#!/usr/bin/python3
# fake qemu-system-x86_64 for the probe: argv[2] is the accelerator; one process, so a
# kill reaches the "guest" itself
import os, sys, time
with open({pids!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
time.sleep({{"tcg": {tcg}, "kvm": {kvm}}}.get(sys.argv[2], 0))
sys.exit(85)
"""


def _fake(tmp_path: Path, tcg: float, kvm: float) -> tuple[str, Path]:
    pids = tmp_path / "pids"
    binary = tmp_path / "qemu"
    binary.write_text(FAKE.format(pids=str(pids), tcg=tcg, kvm=kvm))
    binary.chmod(0o755)
    (tmp_path / "kvm").write_text("")  # a read/write "/dev/kvm"
    return str(binary), pids


def _alive(pids: Path) -> list[int]:
    out = []
    for pid in (int(p) for p in pids.read_text().split()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            out.append(pid)
    return out


async def test_hanging_kvm_gives_tcg_after_the_budget_and_is_killed(tmp_path: Path) -> None:
    binary, pids = _fake(tmp_path, tcg=0.2, kvm=30)
    started = time.monotonic()
    choice = await choose_accel(
        "auto", binary=binary, cache_dir=None, kvm_device=str(tmp_path / "kvm")
    )
    elapsed = time.monotonic() - started
    assert choice.accel == "tcg"
    assert "within 1.0s" in choice.reason
    assert elapsed < 3.0  # side by side: max(1 s budget, TCG), not TCG + budget + …
    assert len(pids.read_text().split()) == 2
    assert _alive(pids) == []


async def test_fast_kvm_is_chosen(tmp_path: Path) -> None:
    binary, _ = _fake(tmp_path, tcg=0.3, kvm=0.05)
    choice = await choose_accel(
        "auto", binary=binary, cache_dir=None, kvm_device=str(tmp_path / "kvm")
    )
    assert choice.accel == "kvm"
    assert choice.kvm_seconds is not None and choice.kvm_seconds < 1.0


async def test_cancelling_the_probe_kills_both_qemus(tmp_path: Path) -> None:
    binary, pids = _fake(tmp_path, tcg=30, kvm=30)
    task = asyncio.create_task(
        choose_accel("auto", binary=binary, cache_dir=None, kvm_device=str(tmp_path / "kvm"))
    )
    for _ in range(100):
        await asyncio.sleep(0.05)
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pids.read_text().split()) == 2
    assert _alive(pids) == []


async def test_probe_image_goes_to_the_state_dir_when_tmp_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the container image the root file system is read-only and /tmp is not a mount:
    the probe writes its firmware image beside its cache, in the state dir (an emptyDir)."""
    argv_log = tmp_path / "argv"
    binary = tmp_path / "qemu"
    binary.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >>{argv_log}\n'
        'for a in "$@"; do case "$a" in */probe.bin) test -s "$a" || exit 1;; esac; done\n'
        "exit 85\n"
    )
    binary.chmod(0o755)
    (tmp_path / "kvm").write_text("")
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    choice = await choose_accel(
        "auto", binary=str(binary), cache_dir=state, kvm_device=str(tmp_path / "kvm")
    )
    assert choice.accel == "kvm"
    runs = argv_log.read_text().splitlines()
    assert len(runs) == 2
    assert all(f"{state}/vl-accel-" in run for run in runs), runs
    assert sorted(p.name for p in state.iterdir()) == ["qemu-accel.json"]  # temp dir removed

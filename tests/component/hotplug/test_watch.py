"""The watcher with real files, real kubelet-style ``..data`` swaps and plain rewrites."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from launcher.hotplug.watch import Snapshot, Watcher

from .atomic import atomic_write


async def next_change(watcher: Watcher, limit: float = 5.0) -> Snapshot:
    async with asyncio.timeout(limit):
        async for snap in watcher.changes():
            return snap
    raise AssertionError("the watcher ended")


async def test_data_swap_is_seen_and_the_whole_new_file_read(tmp_path: Path) -> None:
    spec_dir, info_dir = tmp_path / "spec", tmp_path / "podinfo"
    atomic_write(spec_dir, {"vm.yaml": b"v1"})
    atomic_write(info_dir, {"annotations": b"a1"})
    spec, ann = spec_dir / "vm.yaml", info_dir / "annotations"
    w = Watcher([spec, ann], interval_s=0.05, debounce_s=0.05)
    assert w.baseline().files == ((spec, b"v1"), (ann, b"a1"))
    changes = w.changes()

    async def swap() -> None:
        await asyncio.sleep(0.2)
        atomic_write(spec_dir, {"vm.yaml": b"v2 " * 1000})

    task = asyncio.create_task(swap())
    async with asyncio.timeout(5):
        snap = await anext(changes)
    await task
    assert snap.content(spec) == b"v2 " * 1000 and snap.content(ann) == b"a1"
    atomic_write(info_dir, {"annotations": b"a2"})
    async with asyncio.timeout(5):
        snap = await anext(changes)
    assert snap.content(ann) == b"a2"
    await changes.aclose()


async def test_swap_to_identical_bytes_yields_nothing(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"vm.yaml": b"same"})
    w = Watcher([tmp_path / "vm.yaml"], interval_s=0.05, debounce_s=0.05)
    w.baseline()
    atomic_write(tmp_path, {"vm.yaml": b"same"})
    with pytest.raises(TimeoutError):
        await next_change(w, limit=0.6)


async def test_burst_of_swaps_is_debounced_to_the_last(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"vm.yaml": b"0"})
    path = tmp_path / "vm.yaml"
    w = Watcher([path], interval_s=0.05, debounce_s=0.5)
    w.baseline()
    seen: list[bytes | None] = []

    async def collect() -> None:
        async for snap in w.changes():
            seen.append(snap.content(path))

    task = asyncio.create_task(collect())
    for i in range(1, 6):
        atomic_write(tmp_path, {"vm.yaml": str(i).encode()})
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # one settled read of the last version (a loaded machine may split the burst once)
    assert seen[-1] == b"5" and len(seen) <= 2, seen


async def test_plain_rewrite_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "annotations"
    w = Watcher([path], interval_s=0.05, debounce_s=0.05)
    assert w.baseline().content(path) is None
    path.write_bytes(b"k=v\n")
    assert (await next_change(w)).content(path) == b"k=v\n"
    path.unlink()
    assert (await next_change(w)).content(path) is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one file"):
        Watcher([])
    with pytest.raises(ValueError, match="out of range"):
        Watcher([Path("x")], interval_s=0)


async def test_idle_watcher_arms_no_timer_and_wakes_on_a_swap(tmp_path: Path) -> None:
    """inotify: while nothing changes the watcher sleeps on its descriptor, no timer."""
    atomic_write(tmp_path, {"vm.yaml": b"v1"})
    path = tmp_path / "vm.yaml"
    w = Watcher([path], interval_s=0.05, debounce_s=0.05)
    w.baseline()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(next_change(w, limit=30))
    await asyncio.sleep(0.3)
    soon = [  # next_change's own 30 s timeout is the only timer there may be
        h
        for h in loop._scheduled  # type: ignore[attr-defined]
        if not h.cancelled() and h.when() - loop.time() < 10
    ]
    assert soon == [], soon
    atomic_write(tmp_path, {"vm.yaml": b"v2"})
    assert (await task).content(path) == b"v2"


async def test_without_inotify_it_polls_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    atomic_write(tmp_path, {"vm.yaml": b"v1"})
    path = tmp_path / "vm.yaml"
    w = Watcher([path], interval_s=0.05, debounce_s=0.05, use_inotify=False)
    w.baseline()
    changes = w.changes()
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.2)
    atomic_write(tmp_path, {"vm.yaml": b"v2"})
    async with asyncio.timeout(5):
        assert (await pending).content(path) == b"v2"
    await changes.aclose()


async def test_inotify_refused_falls_back_to_polling_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.hotplug import inotify, watch

    def refuse() -> inotify.DirWatch:
        raise inotify.InotifyUnavailable(24, "inotify_init1: Too many open files")

    monkeypatch.setattr(watch, "DirWatch", refuse)
    path = tmp_path / "annotations"
    w = Watcher([path], interval_s=0.05, debounce_s=0.05)
    w.baseline()
    changes = w.changes()
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.2)
    path.write_bytes(b"k=v\n")
    async with asyncio.timeout(5):
        assert (await pending).content(path) == b"k=v\n"
    await changes.aclose()
    assert any("polling" in r.getMessage() for r in caplog.records)
    assert not w.use_inotify

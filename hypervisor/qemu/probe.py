"""Choose QEMU's accelerator: KVM when it really runs a guest here, else TCG.

The composition root calls :func:`choose_accel` once before building the QEMU argv
(``--accel auto``, the default; ``kvm`` or ``tcg`` force the choice). ``/dev/kvm`` being
present is not enough: on some nested/paravirtual hosts KVM runs real-mode code fine but
crawls or stops with an emulation failure once a kernel enters long mode. So the probe
boots a 64 KiB firmware image (source: ``probe_bios.S`` next to this file; bytes below)
that goes real mode → protected mode → long mode with paging, copies 16 MiB backwards
with ``std; rep movsq`` (the first thing Linux's decompressor does) and exits through
``isa-debug-exit`` with status 85. It runs under TCG (the baseline) and under KVM side by
side; KVM is chosen only if it reaches the exit within ``max(1 s, TCG's time)``. On a
healthy KVM host the KVM run takes well under 0.2 s; on the machines this project is
developed on it takes ~3 s against TCG's 0.2 s. Every run is bounded by a timeout and
killed when it expires.

The result is cached per boot (keyed by ``/proc/sys/kernel/random/boot_id`` and the QEMU
binary) in ``/run/virt-launcher/qemu-accel.json``, so pods started later skip the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hypervisor.errors import HypervisorError

__all__ = ["AccelChoice", "choose_accel", "probe_image", "run_probe", "PROBE_EXIT"]

log = logging.getLogger(__name__)

#: QEMU's exit status when the probe wrote 0x2a to isa-debug-exit: (0x2a << 1) | 1.
PROBE_EXIT = 85
_CODE_ADDR = 0xF000  # offset in the image of physical 0xff000
_RESET = 0xFFF0  # offset of the reset vector
_PROBE_CODE = bytes.fromhex(
    "fa2e660f0116d8f00f20c06683c8010f22c066ea1af00f00080066b810008ed88ec08ed0bf0000010031c0"
    "b9000c0000f3abc7050000010003100100c7050010010003200100bf00200100b883000000b900020000"
    "8907050000200083c708e2f40f20e083c8200f22e0b8000001000f22d8b9800000c00f320d000100000f"
    "300f20c00d000000800f22c0ea92f00f00180048c7c7f8ffff0248c7c6f8ffff01b900002000fdf348a5"
    "fcb02ae6f4f4ebfd0f1f80000000000000000000000000ffff0000009bcf00ffff00000093cf00ffff00"
    "00009baf001f00b8f00f00"
)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
DEFAULT_CACHE_DIR = Path("/run/virt-launcher")


@dataclass(frozen=True, slots=True)
class AccelChoice:
    """The accelerator to use and why (``reason`` is one sentence for the log)."""

    accel: str
    reason: str
    kvm_seconds: float | None = None
    tcg_seconds: float | None = None
    cached: bool = False


def probe_image() -> bytes:
    """The 64 KiB ``-bios`` image: probe code at 0xff000, ``jmp f000:f000`` at the reset vector."""
    image = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    image[_CODE_ADDR : _CODE_ADDR + len(_PROBE_CODE)] = _PROBE_CODE
    image[_RESET : _RESET + 5] = bytes([0xEA, 0x00, 0xF0, 0x00, 0xF0])
    return bytes(image)


async def run_probe(
    binary: str, accel: str, image: Path, limit_s: float
) -> tuple[bool, float, str]:
    """Boot the probe image under ``accel``; return (reached the exit, seconds, stderr tail).

    The QEMU process is killed if it has not exited after ``limit_s`` seconds.
    """
    argv = [
        binary,
        "-accel",
        accel,
        "-machine",
        "q35",
        "-m",
        "128M",
        "-no-user-config",
        "-nodefaults",
        "-display",
        "none",
        "-bios",
        str(image),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as err:
        raise HypervisorError(f"cannot run QEMU binary {binary!r}: {err.strerror}") from err
    try:
        async with asyncio.timeout(limit_s):
            _, stderr = await proc.communicate()
    except TimeoutError:
        await _kill(proc)
        elapsed = time.monotonic() - started
        return False, elapsed, f"no exit within {limit_s:.1f}s"
    except asyncio.CancelledError:  # the run ended (or the other probe decided): no orphan
        await _kill(proc)
        raise
    elapsed = time.monotonic() - started
    tail = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    ok = proc.returncode == PROBE_EXIT
    return ok, elapsed, "" if ok else f"exit {proc.returncode}: {tail[-1] if tail else ''}"


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5.0):
            await proc.wait()


def _cache_key(binary: str) -> dict[str, str]:
    try:
        boot_id = _BOOT_ID.read_text().strip()
    except OSError:
        boot_id = "unknown"
    resolved = binary
    found = shutil.which(binary)
    if found is not None:
        with contextlib.suppress(OSError):
            path = Path(found).resolve()
            resolved = f"{path}@{int(path.stat().st_mtime)}"
    return {"boot_id": boot_id, "binary": resolved}


def _read_cache(path: Path, key: dict[str, str]) -> AccelChoice | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    choice = data.get("choice")
    if not isinstance(choice, dict) or choice.get("accel") not in ("kvm", "tcg"):
        return None
    try:
        return AccelChoice(**{**choice, "cached": True})
    except TypeError:
        return None


def _write_cache(path: Path, key: dict[str, str], choice: AccelChoice) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "choice": asdict(choice)}))
        tmp.replace(path)
    except OSError as err:
        log.warning("cannot cache the accelerator probe result in %s: %s", path, err)


async def choose_accel(
    mode: str = "auto",
    *,
    binary: str = "qemu-system-x86_64",
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    kvm_device: str = "/dev/kvm",
    limit_s: float = 10.0,
) -> AccelChoice:
    """Pick ``"kvm"`` or ``"tcg"`` for ``mode`` (``auto``, ``kvm`` or ``tcg``) and log why.

    ``auto`` probes (see the module docstring) unless this boot's result is cached in
    ``cache_dir`` (None: no cache). Raises HypervisorError when even TCG cannot run the
    probe, since QEMU is then unusable. Each probe run is killed after ``limit_s`` seconds.
    """
    if mode in ("kvm", "tcg"):
        choice = AccelChoice(mode, f"accelerator {mode} forced by --accel")
    elif mode != "auto":
        raise HypervisorError(f"accelerator {mode!r} is not one of auto, kvm, tcg")
    else:
        key = _cache_key(binary)
        cache = cache_dir / "qemu-accel.json" if cache_dir is not None else None
        cached = _read_cache(cache, key) if cache is not None else None
        if cached is not None:
            choice = cached
        else:
            # The probe image goes beside the cache (the state dir, the one writable place
            # in a container with a read-only root file system), else to the temp dir.
            workdir = cache_dir
            if workdir is not None:
                try:
                    os.makedirs(workdir, exist_ok=True)
                except OSError:
                    workdir = None
            choice = await _probe(binary, kvm_device, limit_s, workdir)
            if cache is not None:
                _write_cache(cache, key, choice)
    log.info(
        "QEMU accelerator: %s (%s)",
        choice.accel,
        choice.reason,
        extra={"accel": choice.accel, "cached": choice.cached},
    )
    return choice


async def _probe(
    binary: str, kvm_device: str, limit_s: float, workdir: Path | None = None
) -> AccelChoice:
    """TCG and KVM runs side by side; KVM must finish within max(1 s, TCG's time).

    The probe image is written to a temporary directory in ``workdir`` (None: the
    system's temp dir)."""
    with tempfile.TemporaryDirectory(prefix="vl-accel-", dir=workdir) as tmp:
        image = Path(tmp) / "probe.bin"
        image.write_bytes(probe_image())
        kvm_usable = os.access(kvm_device, os.R_OK | os.W_OK)
        kvm_task = (
            asyncio.create_task(run_probe(binary, "kvm", image, limit_s), name="accel-probe-kvm")
            if kvm_usable
            else None
        )
        try:
            tcg_ok, tcg_s, tcg_why = await run_probe(binary, "tcg", image, limit_s)
            if not tcg_ok:
                raise HypervisorError(f"QEMU {binary!r} cannot run the TCG probe guest ({tcg_why})")
            if kvm_task is None:
                return AccelChoice("tcg", f"{kvm_device} is not usable", tcg_seconds=tcg_s)
            budget = min(limit_s, max(1.0, tcg_s))
            # both started together: KVM has what is left of its budget
            done, _ = await asyncio.wait({kvm_task}, timeout=max(0.0, budget - tcg_s))
            if done:
                kvm_ok, kvm_s, kvm_why = kvm_task.result()
                kvm_ok = kvm_ok and kvm_s <= budget
            else:
                kvm_ok, kvm_s, kvm_why = False, budget, f"no exit within {budget:.1f}s"
        finally:
            if kvm_task is not None and not kvm_task.done():
                kvm_task.cancel()  # run_probe kills its QEMU when cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await kvm_task
    if kvm_ok:
        return AccelChoice(
            "kvm",
            f"KVM ran the probe guest in {kvm_s:.2f}s (TCG {tcg_s:.2f}s)",
            kvm_seconds=kvm_s,
            tcg_seconds=tcg_s,
        )
    return AccelChoice(
        "tcg",
        f"KVM did not run the long-mode probe guest within {budget:.1f}s ({kvm_why}); "
        f"TCG did in {tcg_s:.2f}s",
        kvm_seconds=None,
        tcg_seconds=tcg_s,
    )

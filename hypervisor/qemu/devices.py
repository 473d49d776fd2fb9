"""Which NIC models the installed QEMU can emulate: the spec's model names, probed once.

:data:`NIC_MODELS` maps every NIC model a spec may name (KubeVirt ``interfaces[].model``)
to the QEMU ``-device`` driver that emulates it; :func:`build_argv
<hypervisor.qemu.argv.build_argv>` uses it. Whether a driver is compiled into the
installed binary differs between QEMU builds (``igb`` exists only from QEMU 8.0), so
:func:`qemu_nic_models` asks the binary (``-device help``, bounded by a timeout) and
caches the answer per binary (path, size and mtime) in ``qemu-devices.json`` in the
cache directory, so each pod start pays for the probe at most once per QEMU build.
``launcher.machine.nic_model_problems`` calls it for ``validate``, ``plan``, ``run`` and
hot plug, so a model the binary lacks is refused (exit 2) before anything is changed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from hypervisor.errors import HypervisorError

__all__ = ["NIC_MODELS", "qemu_nic_models", "parse_device_help", "PROBE_TIMEOUT_S", "forget"]

log = logging.getLogger(__name__)

#: spec model name → QEMU ``-device`` driver (q35, each behind its own PCIe root port).
NIC_MODELS: dict[str, str] = {
    "virtio": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "igb": "igb",
    "rtl8139": "rtl8139",
    "ne2k_pci": "ne2k_pci",
    "pcnet": "pcnet",
}
PROBE_TIMEOUT_S = 10.0
_CACHE_NAME = "qemu-devices.json"
_NAME_RE = re.compile(r'^name "([^"]+)"')
_memo: dict[str, frozenset[str]] = {}


def parse_device_help(text: str) -> frozenset[str]:
    """The device driver names (and aliases) in QEMU's ``-device help`` output."""
    names: set[str] = set()
    for line in text.splitlines():
        match = _NAME_RE.match(line.strip())
        if match is None:
            continue
        names.add(match[1])
        alias = re.search(r'alias "([^"]+)"', line)
        if alias is not None:
            names.add(alias[1])
    return frozenset(names)


def _key(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise HypervisorError(f"QEMU binary {binary!r} is not found (PATH or absolute path)")
    path = Path(found).resolve()
    try:
        st = path.stat()
    except OSError as err:
        raise HypervisorError(f"cannot stat QEMU binary {str(path)!r}: {err.strerror}") from err
    return f"{path}@{st.st_size}@{st.st_mtime_ns}"


def _read_cache(cache: Path, key: str) -> frozenset[str] | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    models = data.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        return None
    return frozenset(models)


def _write_cache(cache: Path, key: str, models: frozenset[str]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "models": sorted(models)}))
        tmp.replace(cache)
    except OSError as err:  # a read-only state dir only costs the probe next time
        log.debug("cannot cache the QEMU device list in %s: %s", cache, err)


def _probe(binary: str) -> frozenset[str]:
    argv = [binary, "-nodefaults", "-machine", "none", "-device", "help"]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise HypervisorError(
            f"QEMU {binary!r} did not list its devices within {PROBE_TIMEOUT_S:.0f}s"
        ) from err
    except OSError as err:
        raise HypervisorError(f"cannot run QEMU binary {binary!r}: {err.strerror}") from err
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        raise HypervisorError(
            f"QEMU {binary!r} -device help exited {done.returncode}: {tail[-1] if tail else ''}"
        )
    # QEMU prints the list on stdout (older builds: stderr)
    devices = parse_device_help(done.stdout.decode(errors="replace")) | parse_device_help(
        done.stderr.decode(errors="replace")
    )
    return frozenset(model for model, driver in NIC_MODELS.items() if driver in devices)


def qemu_nic_models(binary: str, cache_dir: Path | None = None) -> frozenset[str]:
    """The spec model names (keys of :data:`NIC_MODELS`) ``binary`` can emulate.

    Memoized per process and cached in ``cache_dir/qemu-devices.json`` (None: no file).
    Raises HypervisorError when the binary cannot be found or run.
    """
    key = _key(binary)
    if key in _memo:
        return _memo[key]
    cache = cache_dir / _CACHE_NAME if cache_dir is not None else None
    models = _read_cache(cache, key) if cache is not None else None
    if models is None:
        models = _probe(binary)
        if cache is not None:
            _write_cache(cache, key, models)
    _memo[key] = models
    return models


def forget() -> None:
    """Drop the per-process memo (tests)."""
    _memo.clear()

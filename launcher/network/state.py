"""The state-dir phase cache: what each pod interface looked like and how far apply got.

Called by ``apply`` (write before touching an interface, again when done), by
``discover`` (a restarted launcher reads the original addresses/MAC back, because the
live pod interface no longer carries them) and by ``cleanup`` (remove). One JSON file
per pod interface, ``<state_dir>/net-<ifname>.json``, written atomically (temp file,
fsync, rename)::

    {"version": 1, "pod_interface": "eth0", "binding": "bridge",
     "phase": "configuring" | "configured", "original": {…PodLink as JSON…}}

A record in phase ``configuring`` means an earlier launcher died in the middle of
changing that interface: continuing would be a guess, so readers raise
:class:`StateCacheError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import StateCacheError

from .names import state_file_name

__all__ = [
    "DEFAULT_STATE_DIR",
    "PHASE_CONFIGURED",
    "PHASE_CONFIGURING",
    "InterfaceRecord",
    "read_record",
    "remove_record",
    "write_record",
]

DEFAULT_STATE_DIR = Path("/var/run/virt-launcher")
VERSION = 1
PHASE_CONFIGURING = "configuring"
PHASE_CONFIGURED = "configured"
_PHASES = frozenset({PHASE_CONFIGURING, PHASE_CONFIGURED})


@dataclass(frozen=True, slots=True)
class InterfaceRecord:
    """One pod interface's cached original state and apply phase."""

    pod_interface: str
    binding: str
    phase: str
    original: dict[str, Any]


def _path(state_dir: Path, pod_interface: str) -> Path:
    return Path(state_dir) / state_file_name(pod_interface)


def read_record(state_dir: Path, pod_interface: str) -> InterfaceRecord | None:
    """The record for ``pod_interface``, None if there is none; StateCacheError if unusable."""
    path = _path(state_dir, pod_interface)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateCacheError(f"cannot read state file {path}: {err}") from err
    try:
        data = json.loads(text)
        record = InterfaceRecord(
            pod_interface=str(data["pod_interface"]),
            binding=str(data["binding"]),
            phase=str(data["phase"]),
            original=dict(data["original"]),
        )
        version = data["version"]
    except (ValueError, KeyError, TypeError) as err:
        raise StateCacheError(f"state file {path} is not a valid record: {err}") from err
    if version != VERSION:
        raise StateCacheError(f"state file {path} has version {version!r}, expected {VERSION}")
    if record.phase not in _PHASES or record.pod_interface != pod_interface:
        raise StateCacheError(
            f"state file {path} records phase {record.phase!r} for "
            f"{record.pod_interface!r}, which this launcher does not know"
        )
    return record


def write_record(state_dir: Path, record: InterfaceRecord) -> None:
    """Write ``record`` atomically (temp file, fsync, rename, fsync of the directory)."""
    directory = Path(state_dir)
    path = _path(directory, record.pod_interface)
    data = {
        "version": VERSION,
        "pod_interface": record.pod_interface,
        "binding": record.binding,
        "phase": record.phase,
        "original": record.original,
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise StateCacheError(f"cannot write state file {path}: {err}") from err


def remove_record(state_dir: Path, pod_interface: str) -> None:
    """Delete the record for ``pod_interface`` if present."""
    _path(state_dir, pod_interface).unlink(missing_ok=True)

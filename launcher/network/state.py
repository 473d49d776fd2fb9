"""The state-dir records: what each pod interface looked like, and the unfinished set-up.

Called by ``apply`` (the transaction record before it touches anything, the interface
records when the set-up is complete), by ``discover`` (a restarted launcher reads the
pod's original addresses and MAC back, because the live pod interface no longer carries
them), by ``recover``/rollback and by ``cleanup``. Two kinds of JSON file in the state
dir, each written atomically (temp file, fsync, rename, fsync of the directory; the temp
file is removed when any of it fails, so ENOSPC never leaves a 0-byte file behind):

``net-<ifname>.json`` — one per configured pod interface (phase ``configured``)::

    {"version": 2, "pod_interface": "eth0", "binding": "bridge", "phase": "configured",
     "original": {…PodLink as JSON, what plan needs…},
     "snapshot": {…the interface exactly as found: MAC, MTU, up, every address with its
                  flags/scope/broadcast/label/lifetimes in kernel order, routes, the
                  net.ipv4.conf values the plan changes…},
     "owned": ["vlbr0", "vltap0"]}

``network-txn.json`` — present only while an ``apply`` runs (or after it was killed):
the same per-NIC entries (phase ``configuring``; ``existed``: the NIC's links that were
there before it began, which its rollback never deletes; for a re-apply of a configured
NIC, ``running``: those links and the pod interface as they were just before, and
``previous``: its interface record then), the previous values of the pod-level
sysctls it writes, and the launcher's nftables ruleset to put back (``nft_before``; null
means "delete the launcher's tables"). It is written before the first change and
removed as the last step of a successful apply (the commit point), so after a crash at
any point either it exists and describes everything needed to roll the pod back, or the
set-up was complete.

Every read is defensive: bytes that are not what the launcher wrote (not UTF-8, not
JSON, the wrong shape, an unknown version) are a :class:`StateCacheError` naming the file
and what to do. Version 1 records (older launchers: ``original`` only, phase
``configuring`` or ``configured``) are still read; a v1 ``configuring`` record is rolled
back from its ``original``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from launcher.errors import StateCacheError

from .names import state_file_name
from .netlink import Address, Route

__all__ = [
    "DEFAULT_STATE_DIR",
    "PHASE_CONFIGURED",
    "PHASE_CONFIGURING",
    "TXN_FILE",
    "InterfaceRecord",
    "LinkSnapshot",
    "Transaction",
    "list_records",
    "read_record",
    "read_txn",
    "remove_record",
    "remove_stale_temp",
    "remove_txn",
    "route_from_json",
    "route_to_json",
    "snapshot_from_json",
    "snapshot_to_json",
    "write_json_atomic",
    "write_record",
    "write_text_atomic",
    "write_txn",
]

DEFAULT_STATE_DIR = Path("/var/run/virt-launcher")
VERSION = 2
PHASE_CONFIGURING = "configuring"
PHASE_CONFIGURED = "configured"
_PHASES = frozenset({PHASE_CONFIGURING, PHASE_CONFIGURED})
TXN_FILE = "network-txn.json"  # never an interface record: those are net-<if>.json

T = TypeVar("T")


class _Bad(ValueError):
    """A record field that is not what the launcher writes."""


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """A pod interface exactly as the launcher found it, before changing anything."""

    name: str
    mac: str
    mtu: int
    up: bool
    master: str | None
    addresses: tuple[Address, ...]  # kernel order, IPv6 link-locals left out (the kernel's)
    routes: tuple[Route, ...]
    ipv4: tuple[tuple[str, int], ...] = ()  # net.ipv4.conf values the plan changes


@dataclass(frozen=True, slots=True)
class InterfaceRecord:
    """One pod interface's original state and how far the launcher got with it."""

    pod_interface: str
    binding: str
    phase: str
    original: dict[str, Any]  # PodLink as JSON (discover.link_to_json)
    snapshot: LinkSnapshot | None = None  # None only in version 1 records
    owned: tuple[str, ...] = ()  # the links the launcher makes for this NIC
    # Only in a transaction entry (never in net-<if>.json):
    existed: tuple[str, ...] = ()  # links of ``owned`` there before it began: never deleted
    running: tuple[LinkSnapshot, ...] = ()  # a re-apply: those links as they were just before
    previous: InterfaceRecord | None = None  # a re-apply: the configured record to put back

    @property
    def reapply(self) -> bool:
        """True for the entry of a NIC that was configured (and running) before the
        transaction began: its rollback goes back to :attr:`running`, not to the CNI's
        pod (docs/network.md, *Link refresh*)."""
        return self.previous is not None


@dataclass(frozen=True, slots=True)
class Transaction:
    """An apply in progress: everything needed to put the pod back as it was."""

    nics: tuple[InterfaceRecord, ...]
    sysctls: tuple[tuple[str, str, str], ...] = ()  # (key, value written, previous value)
    nft_before: str | None = None  # the launcher's ruleset to reload; None: delete its tables


# ---- JSON ---------------------------------------------------------------------------


def route_to_json(r: Route) -> dict[str, Any]:
    """A Route as plain JSON data (every attribute, so it can be put back as it was)."""
    return {
        "dst": str(r.dst),
        "gateway": str(r.gateway) if r.gateway else None,
        "ifname": r.ifname,
        "onlink": r.onlink,
        "metric": r.metric,
        "proto": r.proto,
        "scope": r.scope,
        "prefsrc": str(r.prefsrc) if r.prefsrc else None,
    }


def _get(data: Any, key: str, kind: type[T], *, optional: bool = False) -> T:
    if not isinstance(data, dict):
        raise _Bad(f"expected an object, found {type(data).__name__}")
    if key not in data:
        if optional:
            return None  # type: ignore[return-value]
        raise _Bad(f"{key!r} is missing")
    value = data[key]
    if value is None and optional:
        return None  # type: ignore[return-value]
    if kind is int and isinstance(value, bool):
        raise _Bad(f"{key!r} is {value!r}, not an integer")
    if not isinstance(value, kind):
        raise _Bad(f"{key!r} is {value!r}, not {kind.__name__}")
    return value


def route_from_json(r: Any) -> Route:
    """The inverse of :func:`route_to_json` (older records lack the optional attributes);
    ValueError (its subclass ``_Bad``), KeyError or TypeError on bad data."""
    gateway = _get(r, "gateway", str, optional=True)
    prefsrc = _get(r, "prefsrc", str, optional=True)
    return Route(
        dst=ipaddress.ip_network(_get(r, "dst", str)),
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        ifname=_get(r, "ifname", str),
        onlink=_get(r, "onlink", bool),
        metric=_get(r, "metric", int, optional=True),
        proto=_get(r, "proto", int, optional=True),
        scope=_get(r, "scope", int, optional=True),
        prefsrc=ipaddress.ip_address(prefsrc) if prefsrc else None,
    )


def _address_to_json(a: Address) -> dict[str, Any]:
    return {
        "address": str(a.address),
        "flags": a.flags,
        "scope": a.scope,
        "broadcast": str(a.broadcast) if a.broadcast else None,
        "label": a.label,
        "valid_lft": a.valid_lft,
        "preferred_lft": a.preferred_lft,
    }


def _address_from_json(a: Any) -> Address:
    broadcast = _get(a, "broadcast", str, optional=True)
    return Address(
        address=ipaddress.ip_interface(_get(a, "address", str)),
        flags=_get(a, "flags", int),
        scope=_get(a, "scope", int),
        broadcast=ipaddress.ip_address(broadcast) if broadcast else None,
        label=_get(a, "label", str, optional=True),
        valid_lft=_get(a, "valid_lft", int, optional=True),
        preferred_lft=_get(a, "preferred_lft", int, optional=True),
    )


def snapshot_to_json(s: LinkSnapshot) -> dict[str, Any]:
    """A LinkSnapshot as plain JSON data."""
    return {
        "name": s.name,
        "mac": s.mac,
        "mtu": s.mtu,
        "up": s.up,
        "master": s.master,
        "addresses": [_address_to_json(a) for a in s.addresses],
        "routes": [route_to_json(r) for r in s.routes],
        "ipv4": {knob: value for knob, value in s.ipv4},
    }


def snapshot_from_json(data: Any) -> LinkSnapshot:
    """The inverse of :func:`snapshot_to_json`; ``_Bad``/ValueError/TypeError on bad data."""
    ipv4 = _get(data, "ipv4", dict)
    for knob, value in ipv4.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Bad(f"ipv4 {knob!r} is {value!r}, not an integer")
    return LinkSnapshot(
        name=_get(data, "name", str),
        mac=_get(data, "mac", str),
        mtu=_get(data, "mtu", int),
        up=_get(data, "up", bool),
        master=_get(data, "master", str, optional=True),
        addresses=tuple(_address_from_json(a) for a in _get(data, "addresses", list)),
        routes=tuple(route_from_json(r) for r in _get(data, "routes", list)),
        ipv4=tuple((str(k), int(v)) for k, v in ipv4.items()),
    )


def _record_to_json(record: InterfaceRecord) -> dict[str, Any]:
    return {
        "version": VERSION,
        "pod_interface": record.pod_interface,
        "binding": record.binding,
        "phase": record.phase,
        "original": record.original,
        "snapshot": snapshot_to_json(record.snapshot) if record.snapshot else None,
        "owned": list(record.owned),
        **({"existed": list(record.existed)} if record.existed else {}),
        **({"running": [snapshot_to_json(r) for r in record.running]} if record.running else {}),
        **({"previous": _record_to_json(record.previous)} if record.previous else {}),
    }


def _record_from_json(data: Any, *, in_txn: bool = False) -> InterfaceRecord:
    version = _get(data, "version", int) if not in_txn else VERSION
    if version not in (1, VERSION):
        raise _Bad(f"version {version!r} is not one this launcher knows (1, {VERSION})")
    phase = _get(data, "phase", str)
    if phase not in _PHASES:
        raise _Bad(f"phase {phase!r} is not one this launcher knows")
    snapshot = data.get("snapshot") if isinstance(data, dict) else None
    owned = _get(data, "owned", list, optional=True) or []
    if not all(isinstance(name, str) for name in owned):
        raise _Bad(f"'owned' is {owned!r}, not a list of interface names")
    if version == VERSION and not in_txn and phase != PHASE_CONFIGURED:
        raise _Bad(f"phase {phase!r} in an interface record")
    if version == VERSION and snapshot is None:
        raise _Bad("'snapshot' is missing")
    existed = _get(data, "existed", list, optional=True) or []
    if not all(isinstance(name, str) for name in existed):
        raise _Bad(f"'existed' is {existed!r}, not a list of interface names")
    running = _get(data, "running", list, optional=True) or []
    previous = data.get("previous") if isinstance(data, dict) else None
    if (existed or running or previous is not None) and not in_txn:
        raise _Bad("transaction fields in an interface record")
    return InterfaceRecord(
        pod_interface=_get(data, "pod_interface", str),
        binding=_get(data, "binding", str),
        phase=phase,
        original=_get(data, "original", dict),
        snapshot=snapshot_from_json(snapshot) if snapshot is not None else None,
        owned=tuple(owned),
        existed=tuple(existed),
        running=tuple(snapshot_from_json(r) for r in running),
        previous=_record_from_json(previous) if previous is not None else None,
    )


# ---- files --------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; StateCacheError naming the file.

    The temp file is removed whenever any step fails, so a full disk (ENOSPC) leaves the
    old file (or none) and nothing else.
    """
    directory = path.parent
    tmp = path.with_name(path.name + ".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StateCacheError(f"cannot write state file {path}: {err.strerror or err}") from err


def _load(path: Path, parse: Callable[[Any], T], advice: str) -> T | None:
    """Read and parse the JSON file ``path``; None if it does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateCacheError(
            f"cannot read state file {path}: {err.strerror or err}; {advice}"
        ) from err
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise StateCacheError(
            f"state file {path} is not what the launcher wrote (not UTF-8 text at byte "
            f"{err.start}); {advice}"
        ) from err
    except ValueError as err:
        raise StateCacheError(
            f"state file {path} is not what the launcher wrote (not JSON: {err}); {advice}"
        ) from err
    try:
        return parse(data)
    except (ValueError, KeyError, TypeError) as err:
        raise StateCacheError(
            f"state file {path} is not what the launcher wrote ({err}); {advice}"
        ) from err


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise StateCacheError(f"cannot remove state file {path}: {err.strerror or err}") from err


def _record_path(state_dir: Path, pod_interface: str) -> Path:
    return Path(state_dir) / state_file_name(pod_interface)


def _record_advice(pod_interface: str) -> str:
    return (
        f"it keeps {pod_interface}'s original MAC and addresses: if {pod_interface} still has "
        "them (ip addr), delete the file and restart the launcher, otherwise recreate the pod"
    )


def read_record(state_dir: Path, pod_interface: str) -> InterfaceRecord | None:
    """The record for ``pod_interface``, None if there is none; StateCacheError if unusable."""
    path = _record_path(state_dir, pod_interface)

    def parse(data: Any) -> InterfaceRecord:
        record = _record_from_json(data)
        if record.pod_interface != pod_interface:
            raise _Bad(f"it names pod interface {record.pod_interface!r}")
        return record

    return _load(path, parse, _record_advice(pod_interface))


def write_record(state_dir: Path, record: InterfaceRecord) -> None:
    """Write ``record`` atomically."""
    write_json_atomic(_record_path(state_dir, record.pod_interface), _record_to_json(record))


def remove_record(state_dir: Path, pod_interface: str) -> None:
    """Delete the record for ``pod_interface`` if present."""
    _remove(_record_path(state_dir, pod_interface))


def list_records(state_dir: Path) -> tuple[str, ...]:
    """The pod interfaces that have a record in ``state_dir``."""
    try:
        names = sorted(p.name for p in Path(state_dir).iterdir())
    except FileNotFoundError:
        return ()
    except OSError as err:
        raise StateCacheError(f"cannot list state dir {state_dir}: {err.strerror or err}") from err
    prefix, suffix = state_file_name("X").split("X")
    return tuple(
        n[len(prefix) : -len(suffix)]
        for n in names
        if n.startswith(prefix) and n.endswith(suffix) and len(n) > len(prefix) + len(suffix)
    )


_TXN_ADVICE = (
    "it describes an unfinished network set-up: if the pod's interfaces are as the CNI made "
    "them, delete the file and restart the launcher, otherwise recreate the pod"
)


def _txn_from_json(data: Any) -> Transaction:
    version = _get(data, "version", int)
    if version != VERSION:
        raise _Bad(f"version {version!r} is not {VERSION}")
    nics = tuple(_record_from_json(n, in_txn=True) for n in _get(data, "nics", list))
    sysctls = []
    for item in _get(data, "sysctls", list):
        sysctls.append(
            (_get(item, "key", str), _get(item, "value", str), _get(item, "previous", str))
        )
    return Transaction(
        nics=nics,
        sysctls=tuple(sysctls),
        nft_before=_get(data, "nft_before", str, optional=True),
    )


def read_txn(state_dir: Path) -> Transaction | None:
    """The unfinished transaction in ``state_dir``, None if there is none."""
    return _load(Path(state_dir) / TXN_FILE, _txn_from_json, _TXN_ADVICE)


def write_txn(state_dir: Path, txn: Transaction) -> None:
    """Write the transaction record atomically (before the first change)."""
    data = {
        "version": VERSION,
        "nics": [{k: v for k, v in _record_to_json(n).items() if k != "version"} for n in txn.nics],
        "sysctls": [{"key": k, "value": v, "previous": p} for k, v, p in txn.sysctls],
        "nft_before": txn.nft_before,
    }
    write_json_atomic(Path(state_dir) / TXN_FILE, data)


def remove_stale_temp(state_dir: Path, *names: str) -> None:
    """Remove temp files a killed writer left of the records (and of ``names``); never
    another component's."""
    prefix, suffix = state_file_name("X").split("X")
    try:
        entries = list(Path(state_dir).iterdir())
    except FileNotFoundError:
        return
    except OSError as err:
        raise StateCacheError(f"cannot list state dir {state_dir}: {err.strerror or err}") from err
    for path in entries:
        base = path.name.removesuffix(".tmp")
        if path.name == base:
            continue
        if base in (TXN_FILE, *names) or (base.startswith(prefix) and base.endswith(suffix)):
            _remove(path)


def remove_txn(state_dir: Path) -> None:
    """Remove the transaction record: the commit point of apply, the end of a rollback."""
    _remove(Path(state_dir) / TXN_FILE)
    try:
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StateCacheError(f"cannot open state dir {state_dir}: {err.strerror}") from err
    try:
        os.fsync(dir_fd)
    except OSError as err:
        raise StateCacheError(f"cannot sync state dir {state_dir}: {err.strerror}") from err
    finally:
        os.close(dir_fd)

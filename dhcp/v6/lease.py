"""Static DHCPv6 lease configuration and the server DUID.

The launcher's network plan (and ``python -m dhcp serve --lease6``) builds a
:class:`Config6` per guest NIC; :mod:`dhcp.v6.server` serves it. A lease is keyed by
the guest's MAC (matched against whatever identifies the client, see the server) or
by an exact client DUID.

Server DUID: a DUID-LL built from the serving interface's MAC by default. The launcher
derives the guest-facing interface MAC deterministically, so the DUID stays the same
across launcher restarts without any state. When a ``state_file`` is given to
:func:`server_duid` (the server's ``duid_file``, for links whose MAC may change), a
DUID-UUID is created once and persisted there instead. That file is only a cache: when
it holds anything else (not ASCII, not a UUID) a new DUID is made, written over it and a
warning logged; when it cannot be written (a read-only or full directory), the new DUID
is used for this run with a warning. It is written atomically (temp file, fsync, rename;
the temp file is removed if that fails).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dhcp.v6.codec import duid_ll, duid_uuid, mac_bytes

__all__ = ["Lease6", "Config6", "parse_lease6", "server_duid"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lease6:
    """One static lease: a MAC (``aa:bb:..``) or a DUID (bytes) → address/prefix."""

    address: ipaddress.IPv6Interface
    mac: str | None = None
    duid: bytes | None = None

    def __post_init__(self) -> None:
        if (self.mac is None) == (self.duid is None):
            raise ValueError("a DHCPv6 lease needs exactly one of a MAC or a DUID")


@dataclass(frozen=True, slots=True)
class Config6:
    """Everything one DHCPv6 server serves on one interface."""

    interface: str
    leases: tuple[Lease6, ...]
    dns: tuple[ipaddress.IPv6Address, ...] = ()
    search: tuple[str, ...] = ()
    preferred_lifetime: int = 3600
    valid_lifetime: int = 7200
    rapid_commit: bool = True
    server_duid: bytes | None = None

    def __post_init__(self) -> None:
        if self.preferred_lifetime > self.valid_lifetime:
            raise ValueError(
                f"preferred lifetime {self.preferred_lifetime} exceeds valid lifetime "
                f"{self.valid_lifetime}"
            )

    @property
    def t1(self) -> int:
        return self.preferred_lifetime // 2

    @property
    def t2(self) -> int:
        return self.preferred_lifetime * 4 // 5


def parse_lease6(text: str) -> Lease6:
    """Parse ``MAC_OR_DUID=ADDR/PREFIX`` (DUID as hex, with or without colons)."""
    key, sep, addr = text.partition("=")
    if not sep:
        raise ValueError(f"lease {text!r} is not MAC_OR_DUID=ADDR/PREFIX")
    try:
        iface = ipaddress.IPv6Interface(addr.strip())
    except ValueError as err:
        raise ValueError(f"lease address {addr!r} is not an IPv6 address/prefix") from err
    if "/" not in addr:
        iface = ipaddress.IPv6Interface(f"{iface.ip}/128")
    key = key.strip().lower()
    try:
        return Lease6(iface, mac=":".join(f"{b:02x}" for b in mac_bytes(key)))
    except ValueError:
        pass
    try:
        raw = bytes.fromhex(key.replace(":", "").replace("-", ""))
    except ValueError as err:
        raise ValueError(f"lease key {key!r} is neither a MAC nor a hex DUID") from err
    if not 2 <= len(raw) <= 130:
        raise ValueError(f"lease DUID {key!r} is not 2..130 bytes long")
    return Lease6(iface, duid=raw)


def server_duid(mac: str, state_file: Path | None = None) -> bytes:
    """DUID-LL from ``mac``, or a DUID-UUID kept in ``state_file`` when one is given."""
    if state_file is None:
        return duid_ll(mac)
    # only here: uuid imports platform and _uuid (≈3 ms), and the launcher's plan and its
    # netlink child import this module for Config6 on the way to the VMM spawn
    import uuid  # noqa: PLC0415 - startup: DHCP/RA servers after the spawn

    try:
        text = state_file.read_bytes().decode("ascii").strip()
        return duid_uuid(uuid.UUID(text).bytes)
    except FileNotFoundError:
        pass
    except (ValueError, OSError) as err:  # UnicodeDecodeError is a ValueError
        log.warning(
            "server DUID file %s holds no UUID (%s); a new server DUID is made and kept there",
            state_file,
            err,
            extra={"event": "dhcp6-duid-regenerated", "file": str(state_file)},
        )
    new = uuid.uuid4()
    _write_atomic(state_file, f"{new}\n")
    return duid_uuid(new.bytes)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning(
            "cannot keep the server DUID in %s (%s); clients will see a new one after a restart",
            path,
            err.strerror or err,
        )

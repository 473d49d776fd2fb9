"""Read the pod network namespace as the CNI left it into frozen values (read only).

Called by the composition root (and ``virt-launcher plan``) before ``plan``. Links,
MACs, MTUs, addresses, routes, resolv.conf and the hostname become a :class:`PodState`.
When a state dir is given and holds a record for an interface — a finished set-up, or an
unfinished one that ``apply`` will roll back first — the cached original (MAC, addresses,
routes) replaces what the live interface shows, because a launcher restarted in the same
pod finds the pod address already handed to the guest. discover never changes anything
(``virt-launcher plan`` calls it too); recovering from an unfinished set-up is
``apply``'s (or ``recover``'s) first step.

Address order: the guest of a bridge-bound NIC gets ``addresses4[0]`` and
``addresses6[0]``. IPv4 is listed as the kernel does (the first primary first: the CNI's
pod IP); the kernel lists IPv6 addresses of one scope newest first, so they are reversed
here, oldest (the CNI's) first.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher.errors import NetworkError, StateCacheError

from .netlink import Link, Netlink, Route
from .resolv import Resolv, parse_resolv_conf
from .state import list_records, read_record, read_txn, route_from_json, route_to_json

__all__ = ["PodLink", "PodState", "Route", "discover", "link_from_json", "link_to_json"]


@dataclass(frozen=True, slots=True)
class PodLink:
    """A pod interface: MAC, MTU, addresses (no link-local) and the routes through it."""

    name: str
    mac: str
    mtu: int
    kind: str | None = None
    master: str | None = None
    addresses4: tuple[ipaddress.IPv4Interface, ...] = ()
    addresses6: tuple[ipaddress.IPv6Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    # True when the values come from the state cache (not part of equality)
    restored: bool = field(default=False, compare=False)

    def default_gateway(self, version: int) -> Route | None:
        """The default route of IP ``version`` through this link, if any."""
        for r in self.routes:
            if r.dst.prefixlen == 0 and r.dst.version == version:
                return r
        return None


@dataclass(frozen=True, slots=True)
class PodState:
    """Everything the plan needs to know about the pod netns."""

    links: tuple[PodLink, ...]
    resolv: Resolv = field(default_factory=Resolv)
    hostname: str = ""

    def link(self, name: str) -> PodLink:
        """The pod link ``name``; NetworkError naming what exists if it is missing."""
        for lk in self.links:
            if lk.name == name:
                return lk
        present = ", ".join(lk.name for lk in self.links) or "none"
        raise NetworkError(f"pod interface {name!r} not found (interfaces: {present})")


def link_to_json(link: PodLink) -> dict[str, Any]:
    """A PodLink as plain JSON data (for the state cache)."""
    return {
        "name": link.name,
        "mac": link.mac,
        "mtu": link.mtu,
        "kind": link.kind,
        "addresses4": [str(a) for a in link.addresses4],
        "addresses6": [str(a) for a in link.addresses6],
        "routes": [route_to_json(r) for r in link.routes],
    }


def link_from_json(data: dict[str, Any]) -> PodLink:
    """The inverse of :func:`link_to_json`; ValueError/KeyError/TypeError on bad data."""
    return PodLink(
        name=str(data["name"]),
        mac=str(data["mac"]),
        mtu=int(data["mtu"]),
        kind=data.get("kind"),
        addresses4=tuple(ipaddress.IPv4Interface(a) for a in data["addresses4"]),
        addresses6=tuple(ipaddress.IPv6Interface(a) for a in data["addresses6"]),
        routes=tuple(route_from_json(r) for r in data["routes"]),
        restored=True,
    )


def _pod_link(link: Link, routes: tuple[Route, ...]) -> PodLink:
    v4 = tuple(a for a in link.addresses if isinstance(a, ipaddress.IPv4Interface))
    v6 = tuple(
        a
        for a in reversed(link.addresses)
        if isinstance(a, ipaddress.IPv6Interface) and not a.ip.is_link_local
    )
    return PodLink(
        name=link.name,
        mac=link.mac,
        mtu=link.mtu,
        kind=link.kind,
        master=link.master,
        addresses4=v4,
        addresses6=v6,
        routes=tuple(r for r in routes if r.ifname == link.name),
    )


def _originals(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Each recorded pod interface's original (PodLink JSON): from an unfinished
    transaction first (apply rolls it back to exactly that), else from its record."""
    out: dict[str, dict[str, Any]] = {}
    txn = read_txn(state_dir)
    if txn is not None:
        out.update({nic.pod_interface: nic.original for nic in txn.nics})
    for name in list_records(state_dir):
        if name not in out:
            record = read_record(state_dir, name)
            if record is not None:
                out[name] = record.original
    return out


def _restore(link: PodLink, original: dict[str, Any] | None, state_dir: Path) -> PodLink:
    if original is None:
        return link
    try:
        cached = link_from_json(original)
    except (ValueError, KeyError, TypeError) as err:
        raise StateCacheError(
            f"state file for {link.name!r} in {state_dir} has a bad original ({err}): "
            f"if {link.name} still has its addresses (ip addr), delete the file and restart "
            "the launcher, otherwise recreate the pod"
        ) from err
    return replace(cached, kind=link.kind)


def discover(
    netns: str | None = None,
    state_dir: Path | None = None,
    resolv_conf: Path = Path("/etc/resolv.conf"),
    hostname: str | None = None,
) -> PodState:
    """Read the pod netns (``netns`` name, or the current one) into a :class:`PodState`."""
    with Netlink(netns) as nl:
        links = nl.links()
        routes = nl.routes()
    pod_links = [_pod_link(lk, routes) for lk in links if lk.name != "lo"]
    if state_dir is not None:
        originals = _originals(Path(state_dir))
        pod_links = [_restore(lk, originals.get(lk.name), Path(state_dir)) for lk in pod_links]
    try:
        resolv = parse_resolv_conf(Path(resolv_conf).read_text())
    except FileNotFoundError:
        resolv = Resolv()
    except OSError as err:
        raise NetworkError(f"cannot read {resolv_conf}: {err}") from err
    return PodState(
        links=tuple(pod_links),
        resolv=resolv,
        hostname=hostname if hostname is not None else socket.gethostname(),
    )

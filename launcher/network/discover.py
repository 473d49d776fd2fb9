"""Read the pod network namespace as the CNI left it into frozen values (read only).

Called by the composition root (and ``virt-launcher plan``) before ``plan``. Links,
MACs, MTUs, addresses, routes, resolv.conf and the hostname become a :class:`PodState`.
When a state dir is given and holds a finished record for an interface, the cached
original (MAC, addresses, routes) replaces what the live interface shows, because a
launcher restarted in the same pod finds the pod address already handed to the guest.
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
from .state import PHASE_CONFIGURED, read_record

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


def route_from_json(r: dict[str, Any]) -> Route:
    """The inverse of :func:`route_to_json` (records of older launchers lack the
    optional attributes); ValueError/KeyError/TypeError on bad data."""

    def opt_int(key: str) -> int | None:
        value = r.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"route {key} {value!r} is not an integer")
        return value

    prefsrc = r.get("prefsrc")
    return Route(
        dst=ipaddress.ip_network(r["dst"]),
        gateway=ipaddress.ip_address(r["gateway"]) if r["gateway"] else None,
        ifname=str(r["ifname"]),
        onlink=bool(r["onlink"]),
        metric=opt_int("metric"),
        proto=opt_int("proto"),
        scope=opt_int("scope"),
        prefsrc=ipaddress.ip_address(prefsrc) if prefsrc else None,
    )


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
        for a in link.addresses
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


def _restore(link: PodLink, state_dir: Path) -> PodLink:
    record = read_record(state_dir, link.name)
    if record is None:
        return link
    if record.phase != PHASE_CONFIGURED:
        raise StateCacheError(
            f"pod interface {link.name!r} was left in phase {record.phase!r} by an earlier "
            f"launcher (state dir {state_dir}); its original addresses may be gone, "
            "so the pod must be recreated"
        )
    try:
        original = link_from_json(record.original)
    except (ValueError, KeyError, TypeError) as err:
        raise StateCacheError(
            f"state file for {link.name!r} in {state_dir} has a bad original: {err}"
        ) from err
    return replace(original, kind=link.kind)


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
        pod_links = [_restore(lk, Path(state_dir)) for lk in pod_links]
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

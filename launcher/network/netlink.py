"""The ONE pyroute2 adapter: typed reads and idempotent-friendly writes of links, addresses, routes.

Called by ``discover`` (reads) and ``apply``/``cleanup`` (writes), in the netlink child
(the status endpoint reads counters and neighbours without pyroute2:
:mod:`launcher.network.linkstats`). pyroute2 message
objects never leave this module: reads return the frozen :class:`Link`,
:class:`Address` and :class:`Route` values; every netlink failure becomes a
:class:`NetworkError` naming the interface.

Per-interface IP settings go through netlink too, never through ``/proc/sys`` (read-only
in every unprivileged container): :meth:`Netlink.set_link_settings` sends one
``RTM_NEWLINK`` whose ``IFLA_AF_SPEC`` carries ``AF_INET`` → ``IFLA_INET_CONF`` (the
``net.ipv4.conf.<if>.*`` knobs, by their ``IPV4_DEVCONF_*`` id) and ``AF_INET6`` →
``IFLA_INET6_ADDR_GEN_MODE``. pyroute2 decodes ``AF_INET`` as a flat struct (the dump's
layout), which cannot encode the nested attributes the kernel expects on a set, so the
request uses a small message class of our own (:func:`_setlink_class`). The kernel
accepts nothing else per link for IPv6: ``IFLA_INET6_CONF`` (accept_ra, forwarding,
accept_dad, disable_ipv6, …) is read-only over netlink and can only be a sysctl.

``run_in_netns`` runs a callable in a thread that entered a named network namespace, so
sysctl reads/writes and the ``nft`` child land in the pod netns in tests (in production
the launcher already lives in the pod netns and ``netns`` is ``None``).

pyroute2 is imported when the first :class:`Netlink` is opened, not with this module: the
long-lived launcher imports the network package for its types and plan but runs netlink
work in a short-lived child (:mod:`launcher.netchild`), so pyroute2 (≈14 MiB of RSS,
≈200 ms of imports) never enters it unless the status endpoint is asked (the reader).
:func:`lean_import` is how both import it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from types import TracebackType
from typing import Any, TypeVar

from hypervisor.taps import create_tap
from launcher.errors import NetworkError
from launcher.startup import lean_pyroute2

__all__ = [
    "Address",
    "Link",
    "Netlink",
    "Route",
    "run_in_netns",
    "lean_import",
    "ADDR_GEN_MODE_NONE",
    "IPV4_CONF_IDS",
    "RTPROT_RA",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RTPROT_KERNEL = 2
_RT_TABLE_MAIN = 254
_RTN_UNICAST = 1
_RTNH_F_ONLINK = 4
_IFF_UP = 1
_ENODEV = 19
_EADDRNOTAVAIL = 99
_RTM_NEWLINK = 16
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_INFINITY = 0xFFFFFFFF
RTPROT_RA = 9  # a route learned from a router advertisement
ADDR_GEN_MODE_NONE = 1  # IN6_ADDR_GEN_MODE_NONE: the kernel makes no link-local
#: IFA_F_* flags a caller may set when adding an address (the rest is kernel state:
#: secondary, tentative, dadfailed, deprecated, permanent)
_IFA_SETTABLE = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400 | 0x800
_IFA_F_NODAD = 0x02
_IFA_F_PERMANENT = 0x80

#: ``IPV4_DEVCONF_*`` ids (include/uapi/linux/ip.h) by their sysctl name
#: (``net.ipv4.conf.<if>.<name>``): the attribute types inside ``IFLA_INET_CONF``.
IPV4_CONF_IDS: dict[str, int] = {
    name: i + 1
    for i, name in enumerate(
        (
            "forwarding",
            "mc_forwarding",
            "proxy_arp",
            "accept_redirects",
            "secure_redirects",
            "send_redirects",
            "shared_media",
            "rp_filter",
            "accept_source_route",
            "bootp_relay",
            "log_martians",
            "tag",
            "arp_filter",
            "medium_id",
            "disable_xfrm",
            "disable_policy",
            "force_igmp_version",
            "arp_announce",
            "arp_ignore",
            "promote_secondaries",
            "arp_accept",
            "arp_notify",
            "accept_local",
            "src_valid_mark",
            "proxy_arp_pvlan",
            "route_localnet",
            "igmpv2_unsolicited_report_interval",
            "igmpv3_unsolicited_report_interval",
            "ignore_routes_with_linkdown",
            "drop_unicast_in_l2_multicast",
            "drop_gratuitous_arp",
            "bc_forwarding",
            "arp_evict_nocarrier",
        )
    )
}


@dataclass(frozen=True, slots=True)
class Link:
    """One network interface as netlink reports it."""

    name: str
    index: int
    mac: str
    mtu: int
    kind: str | None  # "bridge", "veth", "tun", "dummy", … or None for a plain device
    master: str | None
    up: bool
    addresses: tuple[IPInterface, ...]
    learning: bool | None = None  # bridge-port MAC learning, None when not a bridge port
    multi_queue: bool | None = None  # tun/tap only
    # net.ipv4.conf.<if>.* as (name, value), sorted by IPV4_DEVCONF id; () without IPv4
    ipv4_conf: tuple[tuple[str, int], ...] = ()
    addr_gen_mode: int | None = None  # IFLA_INET6_ADDR_GEN_MODE; None: no IPv6 on the link

    def ipv4(self, knob: str) -> int | None:
        """The link's ``net.ipv4.conf.<if>.<knob>`` value (None when unknown)."""
        return dict(self.ipv4_conf).get(knob)


@dataclass(frozen=True, slots=True)
class Address:
    """One address of a link with what is needed to add it back exactly as it was."""

    address: IPInterface
    flags: int = 0  # IFA_F_* as the kernel reports them (IFA_FLAGS)
    scope: int = 0
    broadcast: IPAddress | None = None
    label: str | None = None
    valid_lft: int | None = None  # seconds left; None = forever
    preferred_lft: int | None = None

    @property
    def secondary(self) -> bool:
        """An IPv4 secondary (another address of the same subnet came first)."""
        return bool(self.flags & 0x01)

    @property
    def tentative(self) -> bool:
        """IPv6 duplicate address detection has not finished."""
        return bool(self.flags & 0x40)


@dataclass(frozen=True, slots=True)
class Route:
    """A unicast route of the main table that is not a kernel prefix route.

    Equality is (dst, gateway, ifname, onlink); the other attributes are what a dump
    reports, kept so that a route the launcher took away can be put back exactly
    (None: the kernel's default when adding).
    """

    dst: IPNetwork
    gateway: IPAddress | None
    ifname: str
    onlink: bool = False
    metric: int | None = field(default=None, compare=False)
    proto: int | None = field(default=None, compare=False)
    scope: int | None = field(default=None, compare=False)
    prefsrc: IPAddress | None = field(default=None, compare=False)


def lean_import() -> None:
    """Import only the parts of pyroute2 this module uses (the netlink child, the status
    reader): :func:`launcher.startup.lean_pyroute2`, with NetworkError when pyroute2 is
    missing."""
    try:
        lean_pyroute2()
    except ImportError as err:
        raise NetworkError(str(err)) from err


def _api() -> tuple[Any, type[Exception]]:
    """pyroute2's IPRoute class and NetlinkError, imported on first use."""
    from pyroute2.iproute.linux import IPRoute  # noqa: PLC0415 - startup: lean pyroute2
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415 - the same

    return IPRoute, NetlinkError


def _code(err: Exception) -> int | None:
    code = getattr(err, "code", None)
    return code if isinstance(code, int) else None


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _nested(msg: Any, *names: str) -> Any:
    cur = msg
    for name in names:
        if cur is None:
            return None
        cur = cur.get_attr(name)
    return cur


class Netlink:
    """A netlink socket in ``netns`` (a name under /run/netns) or in the current netns."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
            # pyroute2 would create a missing netns instead of failing
            raise NetworkError(f"network namespace {netns!r} does not exist (/run/netns)")
        iproute, self._error = _api()
        self._indexes: dict[str, int] = {}  # name → ifindex, filled by reads, emptied by delete
        try:
            self._ip = iproute(netns=netns) if netns else iproute()
        except (OSError, self._error) as err:
            raise NetworkError(f"cannot open netlink in netns {netns!r}: {err}") from err

    def __enter__(self) -> Netlink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket."""
        self._ip.close()

    # ---- reads -------------------------------------------------------------------------

    def links(self) -> tuple[Link, ...]:
        """Every link with its addresses, sorted by index."""
        try:
            raw_links = list(self._ip.get_links())
            raw_addrs = list(self._ip.get_addr())
        except self._error as err:
            raise NetworkError(f"cannot list links in netns {self.netns!r}: {err}") from err
        names = {m["index"]: _attr(m, "IFLA_IFNAME") for m in raw_links}
        self._indexes = {name: index for index, name in names.items()}
        addrs = _addresses(raw_addrs)
        out = [_to_link(m, names, addrs.get(m["index"], ())) for m in raw_links]
        return tuple(sorted(out, key=lambda lk: lk.index))

    def link(self, name: str) -> Link | None:
        """The link called ``name`` (fetched alone, cheaper than ``links()``), or None."""
        try:
            raw = list(self._ip.link("get", ifname=name))
        except self._error as err:
            if _code(err) == _ENODEV:
                return None
            raise NetworkError(f"cannot read link {name!r} in netns {self.netns!r}: {err}") from err
        if not raw:
            return None
        msg = raw[0]
        self._indexes[name] = int(msg["index"])
        names = {msg["index"]: name}
        master = _attr(msg, "IFLA_MASTER")
        known = {index: known_name for known_name, index in self._indexes.items()}
        try:
            if master and master in known:
                names[master] = known[master]  # from an earlier read: no round trip
            elif master:
                names[master] = _attr(next(iter(self._ip.link("get", index=master))), "IFLA_IFNAME")
            raw_addrs = list(self._ip.get_addr(index=msg["index"]))
        except self._error as err:
            raise NetworkError(f"cannot read link {name!r} in netns {self.netns!r}: {err}") from err
        return _to_link(msg, names, _addresses(raw_addrs).get(msg["index"], ()))

    def addresses(self, name: str) -> tuple[Address, ...]:
        """Every address of link ``name`` in the kernel's order, with flags and lifetimes.

        IPv4: primaries then secondaries, each in the order they were added. IPv6: the
        kernel lists the newest address of a scope first. A label equal to the link's
        name (the kernel's default) is reported as None.
        """
        index = self._index(name)
        try:
            raw = list(self._ip.get_addr(index=index))
        except self._error as err:
            raise NetworkError(
                f"cannot read the addresses of {name!r} in netns {self.netns!r}: {err}"
            ) from err
        out = []
        for a in raw:
            if a["index"] != index:
                continue
            address = _to_address(a)
            if address.label == name:  # the kernel's default label: not worth keeping
                address = replace(address, label=None)
            out.append(address)
        return tuple(out)

    def routes(self, names: dict[int, str] | None = None) -> tuple[Route, ...]:
        """Unicast routes of the main table except kernel prefix routes, IPv4 then IPv6.

        ``names`` maps link index to name (from a ``links()`` the caller already has).
        """
        if names is None:
            names = {lk.index: lk.name for lk in self.links()}
        out: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                raw = list(self._ip.get_routes(family=family, table=_RT_TABLE_MAIN))
            except self._error as err:
                raise NetworkError(f"cannot list routes in netns {self.netns!r}: {err}") from err
            for r in raw:
                if r["proto"] == _RTPROT_KERNEL or r["type"] != _RTN_UNICAST:
                    continue
                oif = _attr(r, "RTA_OIF")
                if oif not in names:
                    continue
                zero = "0.0.0.0" if family == socket.AF_INET else "::"
                dst = ipaddress.ip_network(f"{_attr(r, 'RTA_DST') or zero}/{r['dst_len']}")
                gw = _attr(r, "RTA_GATEWAY")
                src = _attr(r, "RTA_PREFSRC")
                metric = _attr(r, "RTA_PRIORITY")
                out.append(
                    Route(
                        dst=dst,
                        gateway=ipaddress.ip_address(gw) if gw else None,
                        ifname=names[oif],
                        onlink=bool(r["flags"] & _RTNH_F_ONLINK),
                        metric=int(metric) if metric is not None else None,
                        proto=int(r["proto"]),
                        scope=int(r["scope"]),
                        prefsrc=ipaddress.ip_address(src) if src else None,
                    )
                )
        return tuple(out)

    # ---- writes ------------------------------------------------------------------------

    def _index(self, name: str) -> int:
        # from the reads when known (names are never reused while we run: delete forgets
        # them); else one RTM_GETLINK for this name (get_links(ifname=…) would dump all)
        if name in self._indexes:
            return self._indexes[name]
        try:
            found = list(self._ip.link("get", ifname=name))
        except self._error as err:
            if _code(err) != _ENODEV:
                raise NetworkError(
                    f"cannot look up {name!r} in netns {self.netns!r}: {err}"
                ) from err
            found = []
        if not found:
            raise NetworkError(f"interface {name!r} does not exist in netns {self.netns!r}")
        self._indexes[name] = int(found[0]["index"])
        return self._indexes[name]

    def _do(self, what: str, fn: Callable[[], object], ignore: tuple[int, ...] = ()) -> bool:
        """Run one request; False when it failed with an errno in ``ignore``."""
        log.debug("--> netlink %s", what, extra={"netns": self.netns})
        try:
            fn()
        except self._error as err:
            if _code(err) in ignore:
                return False
            raise NetworkError(f"netlink {what} failed in netns {self.netns!r}: {err}") from err
        return True

    def add_bridge(self, name: str, mac: str, mtu: int) -> None:
        """Create a bridge (down) with a fixed MAC, so its IPv6 link-local is predictable."""
        self._do(
            f"add bridge {name}",
            lambda: self._ip.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu),
        )

    def add_tap(self, name: str, mtu: int, multi_queue: bool) -> None:
        """Create a persistent tap (no packet info, vnet header; multiqueue when asked).

        By ``TUNSETIFF`` + ``TUNSETPERSIST`` on ``/dev/net/tun`` in this netns, as
        ``ip tuntap add`` does: pyroute2 forks a helper process for each tap, which cost
        ≈26 of the ≈45 ms a one-NIC apply took (bench/README.md, *Launcher*).
        """
        log.debug("--> ioctl add tap %s", name, extra={"netns": self.netns})
        try:
            run_in_netns(self.netns, lambda: create_tap(name, multi_queue))
        except OSError as err:
            raise NetworkError(
                f"creating tap {name!r} failed in netns {self.netns!r}: {err.strerror or err}"
            ) from err
        self.set_link(name, mtu=mtu)

    def add_veth(self, name: str, peer: str, peer_netns: str, mtu: int) -> None:
        """Create a veth pair whose ``peer`` end lives in ``peer_netns`` (test stand-in)."""
        self._do(
            f"add veth {name}",
            lambda: self._ip.link(
                "add",
                ifname=name,
                kind="veth",
                mtu=mtu,
                peer={"ifname": peer, "net_ns_fd": peer_netns, "mtu": mtu},
            ),
        )

    def set_link(
        self,
        name: str,
        *,
        mac: str | None = None,
        mtu: int | None = None,
        master: str | None = None,
        up: bool | None = None,
    ) -> None:
        """Change a link's MAC, MTU, bridge master or admin state (only what is given)."""
        index = self._index(name)
        args: dict[str, Any] = {}
        if mac is not None:
            args["address"] = mac
        if mtu is not None:
            args["mtu"] = mtu
        if master is not None:
            args["master"] = self._index(master)
        if args:
            self._do(f"set {name} {args}", lambda: self._ip.link("set", index=index, **args))
        if up is not None:
            state = "up" if up else "down"
            self._do(f"set {name} {state}", lambda: self._ip.link("set", index=index, state=state))

    def set_learning(self, name: str, learning: bool) -> None:
        """Turn MAC learning on or off on the bridge port ``name``."""
        index = self._index(name)
        self._do(
            f"brport {name} learning={learning}",
            lambda: self._ip.brport("set", index=index, learning=int(learning)),
        )

    def set_link_settings(
        self,
        name: str,
        *,
        ipv4: tuple[tuple[str, int], ...] = (),
        addr_gen_mode: int | None = None,
    ) -> None:
        """Set ``net.ipv4.conf.<name>.<knob>`` values and the IPv6 link-local mode of
        ``name`` through netlink (one ``RTM_NEWLINK`` with ``IFLA_AF_SPEC``), so
        ``/proc/sys`` may stay read-only. ``ipv4``: (knob, value) pairs, knobs named as
        in ``IPV4_CONF_IDS``; ``addr_gen_mode``: ``IFLA_INET6_ADDR_GEN_MODE``."""
        unknown = [knob for knob, _ in ipv4 if knob not in IPV4_CONF_IDS]
        if unknown:
            raise NetworkError(f"{unknown[0]!r} is not a per-interface IPv4 setting")
        if not ipv4 and addr_gen_mode is None:
            return
        index = self._index(name)
        families: list[list[Any]] = []
        if ipv4:
            conf = [[f"C{IPV4_CONF_IDS[knob]}", int(value)] for knob, value in ipv4]
            families.append(["AF_INET", {"attrs": [["IFLA_INET_CONF", {"attrs": conf}]]}])
        if addr_gen_mode is not None:
            families.append(
                ["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", int(addr_gen_mode)]]}]
            )
        msg = _setlink_class()()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        msg["attrs"] = [["IFLA_AF_SPEC", {"attrs": families}]]
        msg["header"]["type"] = _RTM_NEWLINK
        msg["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_ACK
        what = ", ".join(
            [f"{knob}={value}" for knob, value in ipv4]
            + ([f"addr_gen_mode={addr_gen_mode}"] if addr_gen_mode is not None else [])
        )
        self._do(f"set {name} {what}", lambda: self._ip.nlm_request_batch([msg]))

    def add_address(self, name: str, address: IPInterface | Address) -> None:
        """Add ``address`` to ``name``.

        A bare interface address is the launcher's own: IPv6 without DAD (usable at
        once, never tentative). An :class:`Address` is put back as it was read (flags,
        scope, broadcast, label, lifetimes).
        """
        index = self._index(name)
        if isinstance(address, Address):
            detail = address
        else:
            detail = Address(address, flags=_IFA_F_NODAD if address.version == 6 else 0)
        iface = detail.address
        extra: dict[str, Any] = {}
        flags = detail.flags & _IFA_SETTABLE
        if flags:
            extra["flags"] = flags
        if detail.scope:
            extra["scope"] = detail.scope
        if detail.broadcast is not None:
            extra["broadcast"] = str(detail.broadcast)
        if detail.label:
            extra["label"] = detail.label
        if detail.valid_lft is not None:
            extra["valid_lft"] = detail.valid_lft
            extra["preferred_lft"] = (
                detail.preferred_lft if detail.preferred_lft is not None else detail.valid_lft
            )
        self._do(
            f"add address {iface} to {name}",
            lambda: self._ip.addr(
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **extra,
            ),
        )

    def del_address(self, name: str, address: IPInterface, *, missing_ok: bool = False) -> None:
        """Remove ``address`` from ``name`` (``missing_ok``: no error if it is gone, e.g.
        an IPv4 secondary deleted with its primary)."""
        index = self._index(name)
        self._do(
            f"delete address {address} from {name}",
            lambda: self._ip.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            ),
            ignore=(_EADDRNOTAVAIL,) if missing_ok else (),
        )

    def release(self, name: str) -> None:
        """Take ``name`` out of its bridge (no master)."""
        index = self._index(name)
        self._do(f"release {name}", lambda: self._ip.link("set", index=index, master=0))

    def add_route(self, route: Route) -> None:
        """Add ``route`` (replacing an equal one)."""
        index = self._index(route.ifname)
        args: dict[str, Any] = {
            "dst": str(route.dst.network_address),
            "dst_len": route.dst.prefixlen,
            "oif": index,
            "family": socket.AF_INET if route.dst.version == 4 else socket.AF_INET6,
        }
        if route.gateway is not None:
            args["gateway"] = str(route.gateway)
        if route.onlink:
            args["flags"] = _RTNH_F_ONLINK
        if route.metric is not None:
            args["priority"] = route.metric
        if route.proto is not None:
            args["proto"] = route.proto
        if route.scope is not None:
            args["scope"] = route.scope
        if route.prefsrc is not None:
            args["prefsrc"] = str(route.prefsrc)
        self._do(f"replace route {route}", lambda: self._ip.route("replace", **args))

    def delete(self, name: str) -> None:
        """Delete link ``name`` if it exists."""
        try:
            index = self._index(name)
        except NetworkError:
            return
        self._indexes.pop(name, None)
        self._do(f"delete {name}", lambda: self._ip.link("del", index=index), ignore=(_ENODEV,))


def _to_address(a: Any) -> Address:
    text = _attr(a, "IFA_ADDRESS")
    if a["family"] == socket.AF_INET:
        text = _attr(a, "IFA_LOCAL") or text
    flags = _attr(a, "IFA_FLAGS")
    cache = _attr(a, "IFA_CACHEINFO")
    valid = preferred = None
    if cache is not None and int(cache["ifa_valid"]) != _INFINITY:
        valid, preferred = int(cache["ifa_valid"]), int(cache["ifa_preferred"])
    broadcast = _attr(a, "IFA_BROADCAST")
    label = _attr(a, "IFA_LABEL")
    return Address(
        address=ipaddress.ip_interface(f"{text}/{a['prefixlen']}"),
        flags=int(flags if flags is not None else a["flags"]),
        scope=int(a["scope"]),
        broadcast=ipaddress.ip_address(broadcast) if broadcast else None,
        label=str(label) if label else None,
        valid_lft=valid,
        preferred_lft=preferred,
    )


def _addresses(raw_addrs: list[Any]) -> dict[int, list[IPInterface]]:
    addrs: dict[int, list[IPInterface]] = {}
    for a in raw_addrs:
        text = _attr(a, "IFA_ADDRESS")
        if a["family"] == socket.AF_INET:
            text = _attr(a, "IFA_LOCAL") or text
        addrs.setdefault(a["index"], []).append(ipaddress.ip_interface(f"{text}/{a['prefixlen']}"))
    return addrs


def _to_link(m: Any, names: dict[int, str], addresses: Any) -> Link:
    info = _attr(m, "IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    learning = None
    slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    if slave is not None and slave.get_attr("IFLA_BRPORT_LEARNING") is not None:
        learning = bool(slave.get_attr("IFLA_BRPORT_LEARNING"))
    multi_queue = None
    if kind == "tun":
        data = info.get_attr("IFLA_INFO_DATA")
        if data is not None:
            multi_queue = bool(data.get_attr("IFLA_TUN_MULTI_QUEUE"))
    master = _attr(m, "IFLA_MASTER")
    ipv4_conf, addr_gen_mode = _af_spec(_attr(m, "IFLA_AF_SPEC"))
    return Link(
        name=names[m["index"]],
        index=m["index"],
        mac=(_attr(m, "IFLA_ADDRESS") or "").lower(),
        mtu=int(_attr(m, "IFLA_MTU") or 0),
        kind=kind,
        master=names.get(master) if master else None,
        up=bool(m["flags"] & _IFF_UP),
        addresses=tuple(addresses),
        learning=learning,
        multi_queue=multi_queue,
        ipv4_conf=ipv4_conf,
        addr_gen_mode=addr_gen_mode,
    )


def _af_spec(spec: Any) -> tuple[tuple[tuple[str, int], ...], int | None]:
    """(net.ipv4.conf values, IPv6 addr_gen_mode) from a link's IFLA_AF_SPEC."""
    if spec is None:
        return (), None
    ipv4: list[tuple[str, int]] = []
    inet = spec.get_attr("AF_INET")
    if inet is not None:
        # pyroute2 decodes IFLA_INET_CONF as a struct whose field i is IPV4_DEVCONF id i
        fields = [name for name, _ in getattr(type(inet), "fields", ())]
        for knob, conf_id in IPV4_CONF_IDS.items():
            if conf_id < len(fields) and inet.get(fields[conf_id]) is not None:
                ipv4.append((knob, int(inet[fields[conf_id]])))
    inet6 = spec.get_attr("AF_INET6")
    mode = inet6.get_attr("IFLA_INET6_ADDR_GEN_MODE") if inet6 is not None else None
    return tuple(ipv4), int(mode) if mode is not None else None


@cache
def _setlink_class() -> Any:
    """An ``ifinfmsg`` whose ``IFLA_AF_SPEC`` encodes the nested attributes a set needs.

    pyroute2's own ``ifinfmsg`` maps ``AF_INET`` to the struct a dump returns; the
    kernel (``inet_set_link_af``) wants ``IFLA_INET_CONF`` holding one u32 attribute per
    setting, typed by its ``IPV4_DEVCONF_*`` id. Each class marks its attribute map as
    not yet compiled: pyroute2 keeps the compiled map on the class, and a subclass would
    otherwise inherit its parent's.
    """
    from pyroute2.netlink import nla  # noqa: PLC0415 - startup: lean pyroute2
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: PLC0415 - the same

    class _Conf(nla):  # type: ignore[misc]
        _nlmsg_base__compiled_nla = False
        nla_map = tuple((i, f"C{i}", "uint32") for i in sorted(IPV4_CONF_IDS.values()))

    class _Inet(nla):  # type: ignore[misc]
        _nlmsg_base__compiled_nla = False
        nla_map = ((1, "IFLA_INET_CONF", "conf"),)
        conf = _Conf

    class _Inet6(nla):  # type: ignore[misc]
        _nlmsg_base__compiled_nla = False
        nla_map = ((8, "IFLA_INET6_ADDR_GEN_MODE", "uint8"),)

    class _AfSpec(nla):  # type: ignore[misc]
        _nlmsg_base__compiled_nla = False
        nla_map = ((socket.AF_INET, "AF_INET", "inet"), (socket.AF_INET6, "AF_INET6", "inet6"))
        inet = _Inet
        inet6 = _Inet6

    class _SetLink(ifinfmsg):  # type: ignore[misc]
        af_spec_inet = _AfSpec

    return _SetLink


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that entered the named netns (or directly when None).

    setns(2) affects only the calling thread, and children forked from it inherit its
    netns, so /proc/sys/net writes and an ``nft`` subprocess land in the pod netns.
    """
    if netns is None:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            from pyroute2 import netns as pr_netns  # noqa: PLC0415 - startup: lean pyroute2

            pr_netns.setns(netns, flags=0)
            result.append(fn())
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(err)

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        raise NetworkError(f"work in netns {netns!r} did not finish within 60 s")
    if failure:
        err = failure[0]
        if isinstance(err, NetworkError):
            raise err
        raise NetworkError(f"work in netns {netns!r} failed: {err}") from err
    return result[0]

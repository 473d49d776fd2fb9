"""The ONE pyroute2 adapter: typed reads and idempotent-friendly writes of links, addresses, routes.

Called by ``discover`` (reads), ``apply``/``cleanup`` (writes) and the status endpoint
(:class:`NetlinkReader`: neighbours and link counters, read-only). pyroute2 message
objects never leave this module: reads return the frozen :class:`Link` and
:class:`Route` values; every netlink failure becomes a :class:`NetworkError` naming the
interface. ``run_in_netns`` runs a callable in a thread that entered a named network
namespace, so sysctl writes and the ``nft`` child land in the pod netns in tests (in
production the launcher already lives in the pod netns and ``netns`` is ``None``).

pyroute2 is imported when the first :class:`Netlink` is opened, not with this module: the
long-lived launcher imports the network package for its types and plan but runs netlink
work in a short-lived child (:mod:`launcher.agent`), so pyroute2 (≈14 MiB of RSS,
≈200 ms of imports) never enters it unless the status endpoint is asked (the reader).
:func:`lean_import` is how both import it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import socket
import sys
import threading
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from launcher.errors import NetworkError

__all__ = [
    "Link",
    "Netlink",
    "Route",
    "run_in_netns",
    "lean_import",
    "NetlinkReader",
    "Neighbour",
    "LinkCounters",
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


@dataclass(frozen=True, slots=True)
class Route:
    """A unicast route of the main table that is not a kernel prefix route."""

    dst: IPNetwork
    gateway: IPAddress | None
    ifname: str
    onlink: bool = False


def lean_import() -> None:
    """Import only the parts of pyroute2 this module uses (for the netlink child).

    pyroute2's package ``__init__`` imports every API it has (NDB, IPDB, conntrack,
    nftables, plan9, …: ≈100 ms and ≈6 MiB here) although this module needs only
    ``pyroute2.iproute.linux``, ``pyroute2.netlink.exceptions`` and ``pyroute2.netns``.
    Registering the package without running its ``__init__`` (its submodules still load
    from the installed package directory) skips them. Called by the netlink child and by
    the status endpoint's neighbour reader, the launcher's only pyroute2 users, which
    import submodules only (``from pyroute2 import IPRoute`` would fail after this; a
    unit test keeps the launcher free of such imports). Does nothing when pyroute2 is
    already imported.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise NetworkError("the pyroute2 package is not installed")
    package = types.ModuleType("pyroute2")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["pyroute2"] = package
    import pyroute2.iproute.linux  # noqa: F401, PLC0415


def _api() -> tuple[Any, type[Exception]]:
    """pyroute2's IPRoute class and NetlinkError, imported on first use."""
    from pyroute2.iproute.linux import IPRoute  # noqa: PLC0415 - see the module docstring
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

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
                out.append(
                    Route(
                        dst=dst,
                        gateway=ipaddress.ip_address(gw) if gw else None,
                        ifname=names[oif],
                        onlink=bool(r["flags"] & _RTNH_F_ONLINK),
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

    def _do(self, what: str, fn: Callable[[], object]) -> None:
        log.debug("--> netlink %s", what, extra={"netns": self.netns})
        try:
            fn()
        except self._error as err:
            raise NetworkError(f"netlink {what} failed in netns {self.netns!r}: {err}") from err

    def add_bridge(self, name: str, mac: str, mtu: int) -> None:
        """Create a bridge (down) with a fixed MAC, so its IPv6 link-local is predictable."""
        self._do(
            f"add bridge {name}",
            lambda: self._ip.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu),
        )

    def add_tap(self, name: str, mtu: int, multi_queue: bool) -> None:
        """Create a persistent tap (no packet info, vnet header; multiqueue when asked)."""
        ifr = {"no_pi": True, "vnet_hdr": True, "multi_queue": multi_queue}
        self._do(
            f"add tap {name}",
            lambda: self._ip.link("add", ifname=name, kind="tuntap", mode="tap", ifr=ifr),
        )
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

    def add_address(self, name: str, address: IPInterface) -> None:
        """Add ``address`` to ``name`` (without DAD for IPv6, the address is ours)."""
        index = self._index(name)
        extra: dict[str, Any] = {}
        if address.version == 6:
            extra["flags"] = 0x02  # IFA_F_NODAD
        self._do(
            f"add address {address} to {name}",
            lambda: self._ip.addr(
                "add",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                **extra,
            ),
        )

    def del_address(self, name: str, address: IPInterface) -> None:
        """Remove ``address`` from ``name``."""
        index = self._index(name)
        self._do(
            f"delete address {address} from {name}",
            lambda: self._ip.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            ),
        )

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
        self._do(f"replace route {route}", lambda: self._ip.route("replace", **args))

    def delete(self, name: str) -> None:
        """Delete link ``name`` if it exists."""
        try:
            index = self._index(name)
        except NetworkError:
            return
        self._indexes.pop(name, None)
        self._do(f"delete {name}", lambda: self._ip.link("del", index=index))


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
    )


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
            from pyroute2 import netns as pr_netns  # noqa: PLC0415 - see the module docstring

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


# --------------------------------------------------------------------------- status reads
# Read-only, for the status endpoint (``launcher.status.collect``, on each cached
# snapshot, in a worker thread): the guest's addresses from the pod's neighbour table on
# the guest-facing bridge (no guest agent needed) and the guest NIC counters from its tap.

_NUD_FAILED = 0x20
_NUD_NOARP = 0x40


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One neighbour table entry: an address seen at a MAC on an interface."""

    interface: str
    address: str
    mac: str


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """A link's operational state and its kernel counters (from the link's own side)."""

    name: str
    oper_state: str  # up, down, unknown…
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    mtu: int = 0
    mac: str = ""


class NetlinkReader:
    """One netlink socket (opened lazily, in ``netns`` or the current one), used under a lock.

    Methods block for well under a millisecond on a pod-sized netns; callers run them in a
    worker thread. Failures raise :class:`NetworkError` naming the interface.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ip: Any = None
        self._lock = threading.Lock()

    def _socket(self) -> Any:
        if self._ip is None:
            lean_import()
            IPRoute, NetlinkError = _api()
            try:
                self._ip = IPRoute(netns=self.netns) if self.netns else IPRoute()
            except (OSError, NetlinkError) as err:
                raise NetworkError(f"cannot open netlink in netns {self.netns!r}: {err}") from err
        return self._ip

    def close(self) -> None:
        """Close the socket (a later call opens a new one)."""
        with self._lock:
            if self._ip is not None:
                self._ip.close()
                self._ip = None

    def links(self, names: Iterable[str] | None) -> dict[str, LinkCounters]:
        """Counters of the named links that exist (missing ones are left out); every
        link of the netns when ``names`` is None."""
        wanted = None if names is None else set(names)
        out: dict[str, LinkCounters] = {}
        if wanted is not None and not wanted:
            return out
        with self._lock:
            try:
                raw = list(self._socket().get_links())
            except (OSError, _api()[1]) as err:
                self._drop()
                raise NetworkError(f"cannot list links in netns {self.netns!r}: {err}") from err
        for msg in raw:
            name = _attr(msg, "IFLA_IFNAME")
            if wanted is not None and name not in wanted:
                continue
            stats = _attr(msg, "IFLA_STATS64") or _attr(msg, "IFLA_STATS") or {}
            out[name] = LinkCounters(
                name=name,
                oper_state=str(_attr(msg, "IFLA_OPERSTATE") or "unknown").lower(),
                rx_bytes=int(stats.get("rx_bytes", 0)),
                tx_bytes=int(stats.get("tx_bytes", 0)),
                rx_packets=int(stats.get("rx_packets", 0)),
                tx_packets=int(stats.get("tx_packets", 0)),
                rx_errors=int(stats.get("rx_errors", 0)),
                tx_errors=int(stats.get("tx_errors", 0)),
                rx_dropped=int(stats.get("rx_dropped", 0)),
                tx_dropped=int(stats.get("tx_dropped", 0)),
                mtu=int(_attr(msg, "IFLA_MTU") or 0),
                mac=str(_attr(msg, "IFLA_ADDRESS") or "").lower(),
            )
        return out

    def neighbours(self, interfaces: Iterable[str]) -> tuple[Neighbour, ...]:
        """Resolved (not failed, not NOARP) neighbour entries on ``interfaces``."""
        wanted = set(interfaces)
        if not wanted:
            return ()
        with self._lock:
            try:
                ip = self._socket()
                index = {
                    msg["index"]: _attr(msg, "IFLA_IFNAME")
                    for msg in ip.get_links()
                    if _attr(msg, "IFLA_IFNAME") in wanted
                }
                raw = list(ip.get_neighbours()) if index else []
            except (OSError, _api()[1]) as err:
                self._drop()
                raise NetworkError(
                    f"cannot read the neighbour table of {sorted(wanted)} in netns "
                    f"{self.netns!r}: {err}"
                ) from err
        out: list[Neighbour] = []
        for msg in raw:
            name = index.get(msg["ifindex"])
            if name is None or msg["state"] & (_NUD_FAILED | _NUD_NOARP):
                continue
            dst, mac = _attr(msg, "NDA_DST"), _attr(msg, "NDA_LLADDR")
            if dst and mac:
                out.append(Neighbour(name, str(dst), str(mac).lower()))
        return tuple(out)

    def _drop(self) -> None:
        if self._ip is not None:
            self._ip.close()
            self._ip = None

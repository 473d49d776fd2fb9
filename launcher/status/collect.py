"""Builds :class:`~launcher.status.model.StatusSnapshot` values from a running launcher.

:class:`Collector` is owned by the status server. It reads a
:class:`~launcher.status.model.StatusSource` (what the run reported), the live DHCP server
snapshots, the hypervisor's state, ``/proc`` (launcher and VMM CPU/RSS, :mod:`.procfs`) and netlink
(neighbour table, tap counters, in a worker thread), and remembers what it needs across
calls: condition transition times, the leases seen in DHCP events, and the moment the
launcher first became ready. Snapshots are cached for ``ttl`` seconds so a scrape storm
costs one netlink read per ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Sequence

from dhcp.ra import RaSnapshot
from dhcp.v4.server import Dhcp4Snapshot
from dhcp.v6.server import Dhcp6Snapshot
from hypervisor.machine import VmState
from launcher.errors import NetworkError
from launcher.network.linkstats import LinkCounters, LinkReader, Neighbour
from launcher.network.plan import NicPlan
from launcher.privsep import caps

from . import procfs
from .doctor import Doctor, NicFacts, diagnose, fresh_addresses
from .model import (
    CONDITION_TYPES,
    MAX_EVENTS,
    Condition,
    DhcpCounters,
    Event,
    HypervisorStatus,
    InterfaceStatus,
    LauncherStatus,
    Lease,
    ProcessPrivileges,
    StatusSnapshot,
    StatusSource,
    Traffic,
)

__all__ = ["Collector", "DhcpView", "STALE_LIMIT_S"]

log = logging.getLogger(__name__)

#: The oldest snapshot served as is (while a fresh one is built in the background).
STALE_LIMIT_S = 2.0

_V4_LEASE = frozenset({"ack"})
_V4_GONE = frozenset({"release", "decline"})
_V6_LEASE = frozenset({"bound", "renewed"})
_V6_GONE = frozenset({"released", "declined"})

DhcpView = tuple[
    list[tuple[str, Dhcp4Snapshot]], list[tuple[str, Dhcp6Snapshot]], list[tuple[str, RaSnapshot]]
]


class Collector:
    """Turns a StatusSource into snapshots; see the module docstring."""

    def __init__(
        self,
        source: StatusSource,
        *,
        netlink: LinkReader | None = None,
        ttl: float = 0.5,
    ) -> None:
        self.source = source
        self.netlink = netlink if netlink is not None else LinkReader()
        self.ttl = ttl
        self.loop_lag_s = 0.0
        self._cached: StatusSnapshot | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[StatusSnapshot] | None = None
        self._transitions: dict[str, tuple[bool, str, float]] = {}
        self._leases: dict[tuple[str, str, str | None], Lease] = {}
        self._ready_at: float | None = None
        self._pid = os.getpid()
        self._netlink_failed = False
        self.doctor = Doctor()

    async def snapshot(self) -> StatusSnapshot:
        """The current snapshot.

        With ``ttl`` > 0, a snapshot older than ``ttl`` is still returned at once while one
        background task builds the next (stale-while-revalidate), so no request waits for
        netlink or /proc while requests keep coming; the very first request, and the first
        after an idle spell (a snapshot older than :data:`STALE_LIMIT_S`), waits for a
        fresh one instead of being served old news. ``ttl`` = 0 builds a fresh
        snapshot for every call (tests).
        """
        cached = self._cached
        if cached is not None and self.ttl > 0:
            age = time.monotonic() - self._cached_at
            if age < self.ttl:
                return cached
            if age < min(STALE_LIMIT_S, self.doctor.max_age):  # served while the next is built
                if self._refresh is None:
                    self._refresh = asyncio.create_task(self._rebuild(), name="status-refresh")
                return cached
            # After an idle spell the cached snapshot is too old to serve: build anew.
        return await self._rebuild()

    async def _rebuild(self) -> StatusSnapshot:
        try:
            async with self._lock:
                if self._cached is not None and time.monotonic() - self._cached_at < self.ttl:
                    return self._cached
                snap = await self._build()
                self._cached, self._cached_at = snap, time.monotonic()
                return snap
        finally:
            self._refresh = None

    async def close(self) -> None:
        """Cancel a background refresh still running."""
        task, self._refresh = self._refresh, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- building ----------------------------------------------------------------------

    async def _build(self) -> StatusSnapshot:
        src = self.source
        now = time.time()
        dhcp = self._dhcp_view()
        self._learn_leases(dhcp)
        conditions = self._conditions(now, dhcp)
        ready = all(c.status for c in conditions)
        if ready and self._ready_at is None:
            self._ready_at = max(c.last_transition_time for c in conditions)
        not_ready = next(
            (
                f"{c.type}: {c.reason}" + (f": {c.message}" if c.message else "")
                for c in conditions
                if not c.status
            ),
            None,
        )
        plan = src.plan
        nics = plan.nics if plan is not None else ()
        taps = [n.tap.name for n in nics]
        bridges = [n.bridge.name for n in nics]
        links, neighbours = await self._netlink(taps, bridges)
        launcher, hypervisor, processes = await asyncio.to_thread(self._processes, now)
        hv = src.hypervisor
        running = hv is not None and hv.state is VmState.RUNNING
        if nics and self.doctor.due():
            self.doctor.opener = src.link_opener
            tentative = {a for _, s in dhcp[1] for a in fresh_addresses(s, time.time())}
            await self.doctor.probe(nics, running, tentative)
        interfaces = tuple(
            self._interface(n, dhcp, links, neighbours, self._facts(n, now, dhcp, links))
            for n in nics
        )
        if plan is None and src.spec is not None:
            interfaces = tuple(
                _spec_only(i.name, i.binding.kind.value) for i in src.spec.interfaces
            )
        spec = src.spec
        return StatusSnapshot(
            time=now,
            vm=f"{spec.namespace}/{spec.name}" if spec is not None else None,
            phase=self._phase(conditions),
            ready=ready,
            not_ready_reason=not_ready,
            conditions=conditions,
            launcher=launcher,
            hypervisor=hypervisor,
            interfaces=interfaces,
            nftables_digest=(
                "sha256:" + hashlib.sha256(plan.nftables.encode()).hexdigest()
                if plan is not None and plan.nftables
                else None
            ),
            events=self._events(dhcp),
            processes=processes,
        )

    def _dhcp_view(self) -> DhcpView:
        v4: list[tuple[str, Dhcp4Snapshot]] = []
        v6: list[tuple[str, Dhcp6Snapshot]] = []
        ra: list[tuple[str, RaSnapshot]] = []
        for iface, server in self.source.dhcp_servers:
            snap = server.snapshot()  # type: ignore[attr-defined]
            if isinstance(snap, Dhcp4Snapshot):
                v4.append((iface, snap))
            elif isinstance(snap, Dhcp6Snapshot):
                v6.append((iface, snap))
            elif isinstance(snap, RaSnapshot):
                ra.append((iface, snap))
        return v4, v6, ra

    def _learn_leases(self, dhcp: DhcpView) -> None:
        v4, v6, _ = dhcp
        for iface, snap4 in v4:
            for e in snap4.events:
                key = (iface, "ipv4", e.mac)
                if e.kind in _V4_LEASE and e.address:
                    self._keep(key, Lease("ipv4", e.address, e.mac, e.time, e.kind))
                elif e.kind in _V4_GONE and self._older(key, e.time):
                    del self._leases[key]
        for iface, snap6 in v6:
            for e6 in snap6.events:
                key6 = (iface, "ipv6", e6.mac)
                if e6.kind in _V6_LEASE and e6.address:
                    self._keep(key6, Lease("ipv6", e6.address, e6.mac, e6.at, e6.kind))
                elif e6.kind in _V6_GONE and self._older(key6, e6.at):
                    del self._leases[key6]

    def _older(self, key: tuple[str, str, str | None], t: float) -> bool:
        lease = self._leases.get(key)
        return lease is not None and lease.handed_out_at <= t

    def _keep(self, key: tuple[str, str, str | None], lease: Lease) -> None:
        old = self._leases.get(key)
        if old is None or old.handed_out_at <= lease.handed_out_at:
            self._leases[key] = lease

    def _conditions(self, now: float, dhcp: DhcpView) -> tuple[Condition, ...]:
        src = self.source
        marks = src.marks
        live: dict[str, tuple[bool, str, str]] = {}
        # NetworkApplied: only the run knows.
        mark = marks.get("NetworkApplied")
        live["NetworkApplied"] = (
            (mark[0], mark[1], mark[2])
            if mark
            else (False, "NotApplied", "pod network not wired yet")
        )
        # DhcpServing: the run's mark, checked against the servers' own state.
        mark = marks.get("DhcpServing")
        stopped = [iface for iface, s in dhcp[0] if not s.running]
        needs_dhcp = src.plan is not None and any(
            n.dhcp4 is not None or n.dhcp6 is not None for n in src.plan.nics
        )
        if stopped:
            live["DhcpServing"] = (
                False,
                "ServerStopped",
                f"DHCPv4 on {', '.join(stopped)} stopped",
            )
        elif mark:
            live["DhcpServing"] = (mark[0], mark[1], mark[2])
        elif src.plan is not None and not needs_dhcp and live["NetworkApplied"][0]:
            live["DhcpServing"] = (True, "NoDhcpNeeded", "no interface is served by DHCP")
        else:
            live["DhcpServing"] = (False, "NotStarted", "DHCP servers not started yet")
        hv = src.hypervisor
        if hv is None:
            live["HypervisorRunning"] = (False, "NotStarted", "hypervisor not started yet")
        else:
            state = hv.state
            live["HypervisorRunning"] = (
                state is VmState.RUNNING,
                str(state.value),
                f"{hv.kind} is {state.value}",
            )
        out = []
        for ctype in CONDITION_TYPES:
            status, reason, message = live[ctype]
            mark = marks.get(ctype)
            prev = self._transitions.get(ctype)
            if mark is not None and mark[0] == status and mark[1] == reason:
                at = mark[3]
            elif prev is not None and prev[0] == status and prev[1] == reason:
                at = prev[2]
            elif prev is None and not status:
                at = src.started_at
            else:
                at = now
            self._transitions[ctype] = (status, reason, at)
            out.append(Condition(ctype, status, reason, message, at))
        return tuple(out)

    def _phase(self, conditions: Sequence[Condition]) -> str:
        hv = self.source.hypervisor
        state = hv.state if hv is not None else None
        if state is VmState.SHUTDOWN:
            return "Succeeded"
        if state is VmState.FAILED:
            return "Failed"
        if self.source.stopping is not None:
            return "Stopping"
        if state is VmState.RUNNING:
            return "Running"
        if state is VmState.PAUSED:
            return "Paused"
        if conditions[0].status:
            return "Starting"
        return "Pending"

    def _processes(
        self, now: float
    ) -> tuple[LauncherStatus, HypervisorStatus | None, tuple[ProcessPrivileges, ...]]:
        """/proc reads (in a worker thread: /proc I/O stays off the event loop)."""
        return self._launcher(now), self._hypervisor(), self._privileges()

    def _privileges(self) -> tuple[ProcessPrivileges, ...]:
        """Each process's user and capabilities (launcher, helper, VMM), as /proc shows."""
        hv = self.source.hypervisor
        roles = (
            ("launcher", self._pid),
            ("helper", self.source.helper_pid),
            ("vmm", hv.pid if hv is not None else None),
        )
        out = []
        for role, pid in roles:
            if pid is None:
                continue
            try:
                info = caps.read_proc(pid)
            except (OSError, KeyError, ValueError):
                continue  # gone meanwhile
            out.append(
                ProcessPrivileges(
                    role=role,
                    pid=pid,
                    uid=info.uid,
                    gid=info.gid,
                    cap_effective=tuple(caps.names(info.caps.effective)),
                    cap_permitted=tuple(caps.names(info.caps.permitted)),
                )
            )
        return tuple(out)

    def _launcher(self, now: float) -> LauncherStatus:
        own = procfs.read(self._pid)
        started = self.source.started_at
        return LauncherStatus(
            pid=self._pid,
            started_at=started,
            uptime_s=round(now - started, 3),
            rss_bytes=own.rss_bytes,
            cpu_s=round(own.cpu_s, 3),
            loop_lag_s=round(self.loop_lag_s, 6),
            time_to_ready_s=(
                None if self._ready_at is None else round(self._ready_at - started, 3)
            ),
        )

    def _hypervisor(self) -> HypervisorStatus | None:
        hv = self.source.hypervisor
        if hv is None:
            return None
        pid = hv.pid
        uptime = cpu_s = rss = None
        if pid is not None and hv.state in (VmState.RUNNING, VmState.PAUSED):
            try:
                vmm = procfs.read(pid)
            except OSError:  # gone (ProcessGone) or unreadable: shown without numbers
                pass
            else:
                rss = vmm.rss_bytes
                uptime = round(time.time() - vmm.started_at, 3)
                cpu_s = round(vmm.cpu_s, 3)
        return HypervisorStatus(hv.kind, pid, str(hv.state.value), uptime, cpu_s, rss)

    async def _netlink(
        self, taps: list[str], bridges: list[str]
    ) -> tuple[dict[str, LinkCounters], tuple[Neighbour, ...]]:
        if not taps and not bridges:
            return {}, ()

        def read() -> tuple[dict[str, LinkCounters], tuple[Neighbour, ...]]:
            # every link: the taps' counters, and the pod interfaces for the doctor
            return self.netlink.links(None), self.netlink.neighbours(bridges)

        try:
            result = await asyncio.wait_for(asyncio.to_thread(read), timeout=2.0)
        except (NetworkError, TimeoutError) as err:
            if not self._netlink_failed:
                log.warning("status: netlink read failed: %s", err, extra={"event": "netlink"})
            self._netlink_failed = True
            return {}, ()
        self._netlink_failed = False
        return result

    def _network_name(self, interface: str) -> str | None:
        """KubeVirt's ``network`` label: "pod networking" or the Multus network's name."""
        spec = self.source.spec
        if spec is None:
            return None
        for iface in spec.interfaces:
            if iface.name == interface:
                try:
                    source = spec.network_for(iface).source
                except KeyError:
                    return None
                return getattr(source, "network_name", None) or "pod networking"
        return None

    def _facts(
        self, nic: NicPlan, now: float, dhcp: DhcpView, links: dict[str, LinkCounters]
    ) -> NicFacts:
        """What the doctor needs to know of ``nic`` (docs/status.md, *Network doctor*)."""
        hv = self.source.hypervisor
        mark = self.source.marks.get("HypervisorRunning")
        v4, v6, ra = dhcp
        served = {nic.bridge.name, nic.tap.name}
        return NicFacts(
            nic=nic,
            now=now,
            vmm_running=hv is not None and hv.state is VmState.RUNNING,
            vmm_state="not started" if hv is None else str(hv.state.value),
            running_since=mark[3] if mark is not None and mark[0] else None,
            dhcp4=next((s for iface, s in v4 if iface in served), None),
            dhcp6=next((s for iface, s in v6 if iface in served), None),
            ra=next((s for iface, s in ra if iface in served), None),
            tap=links.get(nic.tap.name),
            pod_link=links.get(nic.pod_interface),
            pod_links=tuple(links.values()),
            probes=self.doctor.probes(nic.name),
            silent_after_s=self.doctor.silent_after_s,
        )

    def _interface(
        self,
        nic: NicPlan,
        dhcp: DhcpView,
        links: dict[str, LinkCounters],
        neighbours: Iterable[Neighbour],
        facts: NicFacts | None = None,
    ) -> InterfaceStatus:
        served = {nic.bridge.name, nic.tap.name}
        if nic.dhcp4 is not None:
            served.add(nic.dhcp4.interface)
        if nic.dhcp6 is not None:
            served.add(nic.dhcp6.interface)
        mac = nic.device.mac.lower()
        leases = tuple(
            sorted(
                (
                    lease
                    for (iface, _fam, lmac), lease in self._leases.items()
                    if iface in served and (lmac is None or lmac.lower() == mac)
                ),
                key=lambda lease: (lease.family, lease.handed_out_at),
            )
        )
        addrs: list[str] = []
        sources = ["domain"]
        for lease in leases:
            if lease.address not in addrs:
                addrs.append(lease.address)
        if leases:
            sources.append("dhcp-lease")
        seen = False
        for nb in neighbours:
            if nb.interface == nic.bridge.name and nb.mac == mac:
                ip = ipaddress.ip_address(nb.address)
                if ip.is_link_local:
                    continue
                seen = True
                if nb.address not in addrs:
                    addrs.append(nb.address)
        if seen:
            sources.append("neighbour-table")
        addrs.sort(key=lambda a: ipaddress.ip_address(a).version)
        tap = links.get(nic.tap.name)
        return InterfaceStatus(
            name=nic.name,
            interface_name=None,
            mac=mac,
            ip_address=addrs[0] if addrs else None,
            ip_addresses=tuple(addrs),
            info_source=", ".join(sources),
            queue_count=nic.tap.queues,
            link_state=self.source.links.get(nic.name)
            or ("unknown" if tap is None else ("up" if tap.oper_state == "up" else "down")),
            binding=nic.binding.value,
            pod_interface=nic.pod_interface,
            tap=nic.tap.name,
            bridge=nic.bridge.name,
            leases=leases,
            dhcp=_counters(served, dhcp),
            traffic=(
                None
                if tap is None
                else Traffic(
                    rx_bytes=tap.tx_bytes,
                    tx_bytes=tap.rx_bytes,
                    rx_packets=tap.tx_packets,
                    tx_packets=tap.rx_packets,
                )
            ),
            hotplug_state=self.source.hotplug.get(nic.name, (None, None))[0],
            hotplug_error=self.source.hotplug.get(nic.name, (None, None))[1],
            diagnosis=None if facts is None or not links else diagnose(facts),
            network=self._network_name(nic.name),
            errors=(0, 0, 0, 0)
            if tap is None
            else (tap.tx_errors, tap.rx_errors, tap.tx_dropped, tap.rx_dropped),
        )

    def _events(self, dhcp: DhcpView) -> tuple[Event, ...]:
        events = list(self.source.events())
        v4, v6, _ = dhcp
        for iface, snap4 in v4:
            events.extend(
                Event(e.time, "dhcp4", e.kind, e.reason, iface, e.mac, e.address)
                for e in snap4.events
            )
        for iface, snap6 in v6:
            events.extend(
                Event(e.at, "dhcp6", e.kind, f"duid {e.duid}", iface, e.mac, e.address)
                for e in snap6.events
            )
        events.sort(key=lambda e: e.time)
        return tuple(events[-MAX_EVENTS:])


def _counters(served: set[str], dhcp: DhcpView) -> DhcpCounters:
    v4, v6, ra = dhcp
    c4 = [s for iface, s in v4 if iface in served]
    c6: dict[str, int] = {}
    for iface, s6 in v6:
        if iface in served:
            for k, v in s6.counters.items():
                c6[k] = c6.get(k, 0) + v
    adverts = sum(s.adverts for iface, s in ra if iface in served)
    solicits = sum(s.solicits for iface, s in ra if iface in served)

    def total(name: str) -> int:
        return sum(getattr(s.counters, name) for s in c4)

    return DhcpCounters(
        offers=total("offers"),
        acks=total("acks"),
        naks=total("naks"),
        declines=total("declines"),
        releases=total("releases"),
        informs=total("informs"),
        received=total("received"),
        malformed=total("malformed"),
        rate_limited=total("rate_limited"),
        v6=c6,
        router_adverts=adverts,
        router_solicits=solicits,
        serving=bool(c4) and all(s.running for s in c4),
    )


def _spec_only(name: str, binding: str) -> InterfaceStatus:
    return InterfaceStatus(
        name=name,
        interface_name=None,
        mac=None,
        ip_address=None,
        ip_addresses=(),
        info_source="domain",
        queue_count=1,
        link_state="unknown",
        binding=binding,
        pod_interface=None,
        tap=None,
        bridge=None,
        leases=(),
        dhcp=DhcpCounters(),
        traffic=None,
    )

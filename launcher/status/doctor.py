"""The network doctor: "why has my VM no network?", answered per guest NIC in ``/status``.

:func:`diagnose` is PURE: from what the launcher observed of one NIC (:class:`NicFacts`:
the plan, its DHCPv4/DHCPv6/RA servers' snapshots, the live links, the probes) it makes
one :class:`Diagnosis` — the last exchanges, lease age against T1, MTUs, the findings
(each with a code, a severity, what was seen and the next step) and ONE verdict
(``ok``, ``degraded``, ``no-network``) with a reason sentence naming the next step.

:class:`Doctor` is owned by the status collector. It runs the bounded probes
(``launcher.status.probe``: the guest on its tap, the pod's gateway on the pod
interface) only when a request finds the last diagnosis older than ``max_age`` (10 s):
nothing here costs anything while nobody asks. The rules, their codes and their
fixes are listed in docs/status.md (*Network doctor*).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from launcher.network.linkstats import LinkCounters
from launcher.network.plan import NicPlan

from .probe import LinkOpener, ProbeResult, arp_probe, link_local_from_mac, nd_probe

if TYPE_CHECKING:
    from dhcp.ra import RaSnapshot
    from dhcp.v4.server import Dhcp4Snapshot
    from dhcp.v6.server import Dhcp6Snapshot

__all__ = [
    "Diagnosis",
    "Doctor",
    "Exchange",
    "Finding",
    "NicFacts",
    "diagnose",
    "fresh_addresses",
    "VERDICTS",
    "SILENT_AFTER_S",
]

#: Verdicts, best first (the metrics gauge uses this order).
VERDICTS = ("ok", "degraded", "no-network")
#: A DHCP-served guest that has sent nothing this long after the VMM started is "silent".
SILENT_AFTER_S = 60.0
#: An OFFER not followed by a REQUEST for this long: the guest does not take our replies.
NO_REQUEST_AFTER_S = 30.0
_SEVERITY = {"info": 0, "warning": 1, "error": 2}
_V4_MESSAGES = 6  # last DHCPv4 messages shown per NIC


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation worth telling: ``code`` is stable (docs/status.md), ``fix`` the next step."""

    code: str
    severity: str  # info, warning, error
    message: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Exchange:
    """The guest's last DHCP messages as the server saw them (newest last)."""

    messages: tuple[tuple[str, float, str | None], ...]  # (kind, wall time, address)
    last_kind: str | None
    last_at: float | None
    reason: str | None = None  # a NAK's or DECLINE's reason


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One guest NIC's diagnosis (``interfaces[].diagnosis`` in ``/status``)."""

    verdict: str
    reason: str
    checked_at: float
    findings: tuple[Finding, ...]
    dhcp4: Exchange | None = None
    dhcp6: Exchange | None = None
    router_solicits: int = 0
    last_solicit_at: float | None = None
    router_adverts: int = 0
    last_advert_at: float | None = None
    lease_age_s: float | None = None
    renew_due_s: float | None = None  # T1
    renewed: bool | None = None
    mtu: dict[str, int | None] = field(default_factory=dict)
    probes: tuple[ProbeResult, ...] = ()


@dataclass(frozen=True, slots=True)
class NicFacts:
    """Everything observed of one guest NIC at ``now``."""

    nic: NicPlan
    now: float
    vmm_running: bool
    vmm_state: str
    running_since: float | None  # wall time the VMM reached running
    dhcp4: Dhcp4Snapshot | None = None
    dhcp6: Dhcp6Snapshot | None = None
    ra: RaSnapshot | None = None
    tap: LinkCounters | None = None
    pod_link: LinkCounters | None = None
    pod_links: tuple[LinkCounters, ...] = ()  # every link of the pod (a rename is found)
    probes: tuple[ProbeResult, ...] = ()
    silent_after_s: float = SILENT_AFTER_S


# ---- the rules ------------------------------------------------------------------------


def _v4_exchange(facts: NicFacts) -> Exchange | None:
    snap = facts.dhcp4
    if snap is None:
        return None
    mac = facts.nic.device.mac.lower()
    mine = [e for e in snap.events if e.mac.lower() == mac]
    if not mine:
        return Exchange((), None, None)
    last = mine[-1]
    bad = next((e for e in reversed(mine) if e.kind in ("nak", "decline")), None)
    return Exchange(
        tuple((e.kind, e.time, e.address) for e in mine[-_V4_MESSAGES:]),
        last.kind,
        last.time,
        None if bad is None else f"{bad.kind}: {bad.reason}",
    )


def _v6_exchange(facts: NicFacts) -> Exchange | None:
    snap = facts.dhcp6
    if snap is None:
        return None
    mac = facts.nic.device.mac.lower()
    mine = [e for e in snap.events if e.mac is None or e.mac.lower() == mac]
    if not mine:
        return Exchange((), None, None)
    last = mine[-1]
    return Exchange(
        tuple((e.kind, e.at, e.address) for e in mine[-_V4_MESSAGES:]), last.kind, last.at
    )


def _lease(facts: NicFacts, ex4: Exchange | None) -> tuple[float | None, float | None, bool | None]:
    """(lease age, T1, renewed since the first ACK) of the guest's DHCPv4 lease."""
    cfg = facts.nic.dhcp4
    if cfg is None or ex4 is None:
        return None, None, None
    acks = [t for kind, t, _ in ex4.messages if kind == "ack"]
    if not acks:
        return None, None, None
    return round(facts.now - acks[-1], 1), cfg.lease_time / 2, len(acks) > 1


def _finding_pod_link(facts: NicFacts) -> Finding | None:
    if facts.pod_link is not None or not facts.pod_links:
        return None
    name = facts.nic.pod_interface
    original = facts.nic.original.mac.lower()
    planned = facts.nic.pod_port.new_mac if facts.nic.pod_port is not None else None
    macs = {original, (planned or "").lower()} - {""}
    renamed = next((lk.name for lk in facts.pod_links if lk.mac in macs), None)
    if renamed is not None:
        return Finding(
            "pod-interface-renamed",
            "error",
            f"the pod interface {name!r} is now named {renamed!r}",
            "something in the pod renamed it (another container, a CNI plugin chained "
            "after the launcher started); recreate the pod",
        )
    return Finding(
        "pod-interface-gone",
        "error",
        f"the pod interface {name!r} is gone",
        "the CNI removed it or the pod sandbox was re-created underneath the launcher; "
        "recreate the pod",
    )


def _findings_dhcp4(facts: NicFacts, ex4: Exchange | None) -> list[Finding]:
    cfg, snap = facts.nic.dhcp4, facts.dhcp4
    if cfg is None or snap is None or ex4 is None:
        return []
    out: list[Finding] = []
    address = str(cfg.leases[0].address.ip) if cfg.leases else "?"
    if ex4.reason is not None and ex4.last_kind in ("nak", "decline"):
        kind = ex4.last_kind
        fix = (
            "another host answers ARP for the address (arp_ignore on the pod side, an IP "
            "conflict on the pod network); see probes"
            if kind == "decline"
            else "the guest asked for an address this pod does not have (a stale lease "
            "from an earlier pod); it restarts DHCP on its own"
        )
        out.append(
            Finding(f"dhcp-{kind}", "error" if kind == "decline" else "warning", ex4.reason, fix)
        )
    running_for = None if facts.running_since is None else facts.now - facts.running_since
    if ex4.last_kind is None and not snap.strangers and not any(p.strangers for p in facts.probes):
        if running_for is not None and running_for >= facts.silent_after_s:
            out.append(
                Finding(
                    "no-dhcp-traffic",
                    "error",
                    f"no DHCPv4 message from the guest in {round(running_for)} s since the "
                    f"VM started ({address} planned)",
                    "the guest has no DHCP client on this NIC (static cloud-init "
                    "networkData, NetworkManager 'manual'), or the NIC is down inside the "
                    f"guest; configure DHCP on it, or give it {address} statically",
                )
            )
    elif ex4.last_kind == "offer" and ex4.last_at is not None:
        waited = facts.now - ex4.last_at
        if waited >= NO_REQUEST_AFTER_S:
            out.append(
                Finding(
                    "offer-not-taken",
                    "error",
                    f"the guest was OFFERed {address} {round(waited)} s ago and never REQUESTed it",
                    "the guest does not receive our replies: check the guest's firewall "
                    "and its MTU, and the probes below",
                )
            )
    acks = [t for kind, t, _ in ex4.messages if kind == "ack"]
    if acks:
        age = facts.now - acks[-1]
        t1 = cfg.lease_time / 2
        if age > t1 * 1.1 + 30:
            out.append(
                Finding(
                    "lease-not-renewed",
                    "warning",
                    f"the lease was ACKed {round(age)} s ago and not renewed at T1 ({round(t1)} s)",
                    "the guest's DHCP client stopped (it keeps the address until the lease "
                    "expires); restart it in the guest",
                )
            )
    return out


def _findings_dhcp6(facts: NicFacts, ex6: Exchange | None) -> list[Finding]:
    if facts.nic.dhcp6 is None or ex6 is None or ex6.last_kind is not None:
        return []
    running_for = None if facts.running_since is None else facts.now - facts.running_since
    if running_for is None or running_for < facts.silent_after_s:
        return []
    ra = facts.ra
    heard = ra is not None and ra.last_solicit > 0
    return [
        Finding(
            "no-dhcp6",
            "warning",
            f"no DHCPv6 message from the guest in {round(running_for)} s"
            + (" (it did solicit router advertisements)" if heard else ""),
            "the guest ignores the RA's managed (M) flag or has IPv6 off on this NIC; "
            "enable DHCPv6 in the guest (netplan dhcp6: true)",
        )
    ]


def _findings_mtu(facts: NicFacts) -> tuple[list[Finding], dict[str, int | None]]:
    nic = facts.nic
    told4 = nic.dhcp4.mtu if nic.dhcp4 is not None else None
    told6 = nic.ra.mtu if nic.ra is not None else None
    pod = facts.pod_link.mtu if facts.pod_link is not None else nic.original.mtu
    tap = facts.tap.mtu if facts.tap is not None and facts.tap.mtu else None
    view = {"pod": pod, "tap": tap, "planned": nic.tap.mtu, "dhcp4": told4, "ra": told6}
    out: list[Finding] = []
    if tap is not None and tap != nic.tap.mtu:
        out.append(
            Finding(
                "mtu-changed",
                "warning",
                f"the tap's MTU is {tap}, the plan set {nic.tap.mtu}",
                "something changed the tap's MTU after start-up; frames the guest sends "
                f"above {tap} bytes are dropped",
            )
        )
    told = max((m for m in (told4, told6) if m), default=None)
    if told is not None and pod and told > pod:
        out.append(
            Finding(
                "mtu-too-large",
                "warning",
                f"the guest was told MTU {told}, the pod link carries {pod}",
                f"large packets are dropped on the pod link: lower the interface mtu to {pod}",
            )
        )
    if facts.tap is not None and (facts.tap.tx_dropped or facts.tap.rx_dropped):
        out.append(
            Finding(
                "tap-drops",
                "info",
                f"tap drops: {facts.tap.tx_dropped} toward the guest, {facts.tap.rx_dropped} "
                "from it",
                "drops toward the guest mean it does not read its queue fast enough "
                "(a busy or paused guest)",
            )
        )
    return out, view


def _findings_strangers(facts: NicFacts) -> list[Finding]:
    """Another MAC on the guest's tap: seen by the DHCPv4 server (no lease for it) or by
    the probes on the tap, before the anti-spoofing rules drop its frames."""
    planned = facts.nic.device.mac.lower()
    seen: dict[str, str] = {}
    if facts.dhcp4 is not None:
        for mac, count, _at in facts.dhcp4.strangers:
            seen[mac] = f"{count} DHCP request(s)"
    for p in facts.probes:
        for mac, what in p.strangers:
            if mac not in seen or what == "dhcp":
                seen[mac] = "DHCP requests" if what == "dhcp" else "frames"
    return [
        Finding(
            "unknown-mac",
            "error",
            f"{what} from MAC {mac} on the guest's tap, but this NIC's guest MAC is "
            f"{planned}: the anti-spoofing rules drop them",
            f"the guest changed its MAC (netplan/cloud-init 'macaddress', a bond); keep "
            f"{planned} in the guest, or set macAddress: {mac} on the interface in the spec",
        )
        for mac, what in seen.items()
        if mac != planned
    ]


def _findings_probes(facts: NicFacts) -> list[Finding]:
    out: list[Finding] = []
    planned = facts.nic.device.mac.lower()
    tap = facts.nic.tap.name
    # silent on every address: no network; silent on one family only: degraded (an IPv6
    # address still in duplicate address detection does not answer for about a second)
    answers = any(p.answered for p in facts.probes if p.interface == tap)
    fresh6 = _fresh_dhcp6(facts)
    for p in facts.probes:
        guest = p.interface == tap
        if guest and not p.answered and p.target in fresh6:  # not probed, or silent
            out.append(
                Finding(
                    "address-in-dad",
                    "info",
                    f"{p.target} was bound by DHCPv6 {fresh6[p.target]:.1f} s ago: the guest "
                    "does not answer for it while duplicate address detection runs",
                )
            )
        elif p.answered is None:
            out.append(Finding("probe-unavailable", "info", f"{p.target}: {p.detail}"))
        elif guest and not p.answered:
            out.append(
                Finding(
                    "guest-silent",
                    "warning" if answers else "error",
                    f"the guest does not answer {'ARP' if '.' in p.target else 'ND'} for "
                    f"{p.target} on {p.interface} ({p.detail})",
                    "the guest is frozen or still booting, its NIC is down, or it uses "
                    "another address; look at its console (virt-launcher logs, serial)",
                )
            )
        elif guest and p.mac is not None and p.mac != planned:
            out.append(
                Finding(
                    "guest-mac-mismatch",
                    "error",
                    f"the guest answers for {p.target} from MAC {p.mac}, planned {planned}: "
                    "its frames are dropped by the anti-spoofing rules",
                    f"keep {planned} in the guest, or set macAddress: {p.mac} in the spec",
                )
            )
        elif not guest and not p.answered:
            out.append(
                Finding(
                    "gateway-silent",
                    "warning",
                    f"the pod's gateway {p.target} does not answer on {p.interface} ({p.detail})",
                    "the pod network is down at the node (CNI, the host side of the pod's "
                    "veth); check the node's network for this pod",
                )
            )
    return out


#: An IPv6 address is tentative (no ND answers) for about a second after the guest
#: configures it (RFC 4862 DAD: one probe, RetransTimer 1 s); the doctor allows this much.
DAD_GRACE_S = 5.0


def fresh_addresses(snapshot: Dhcp6Snapshot | None, now: float) -> dict[str, float]:
    """Addresses a guest was bound less than ``DAD_GRACE_S`` ago → seconds since (still
    tentative in the guest: it answers no ND for them yet)."""
    if snapshot is None:
        return {}
    out: dict[str, float] = {}
    for e in snapshot.events:
        age = now - e.at
        if e.kind in ("bound", "renewed") and e.address and 0 <= age < DAD_GRACE_S:
            out[e.address] = age
    return out


def _fresh_dhcp6(facts: NicFacts) -> dict[str, float]:
    return fresh_addresses(facts.dhcp6, facts.now)


def _findings_setup(facts: NicFacts) -> list[Finding]:
    nic = facts.nic
    out: list[Finding] = []
    gw = nic.original.default_gateway(4)
    for addr in nic.original.addresses4:
        if addr.network.prefixlen == 32 and gw is not None and gw.gateway is not None:
            hop = ipaddress.ip_address(gw.gateway)
            if hop.is_link_local:
                out.append(
                    Finding(
                        "calico-32",
                        "info",
                        f"the pod address {addr} is a /32 with link-local gateway {hop} "
                        "(Calico-style); the guest gets an on-link route to it by DHCP "
                        "option 121",
                        "a guest DHCP client without option 121 (udhcpc's default script, "
                        "old dhclient) gets no default route: use one that honours 121",
                    )
                )
    return out


def diagnose(facts: NicFacts) -> Diagnosis:
    """One NIC's diagnosis from ``facts`` (pure; see the module docstring)."""
    ex4, ex6 = _v4_exchange(facts), _v6_exchange(facts)
    findings: list[Finding] = []
    if not facts.vmm_running:
        findings.append(
            Finding(
                "vm-not-running",
                "error",
                f"the VM is not running (hypervisor state {facts.vmm_state})",
                "see the HypervisorRunning condition and the launcher's log",
            )
        )
    gone = _finding_pod_link(facts)
    if gone is not None:
        findings.append(gone)
    findings += _findings_strangers(facts)
    findings += _findings_dhcp4(facts, ex4)
    findings += _findings_dhcp6(facts, ex6)
    mtu_findings, mtu = _findings_mtu(facts)
    findings += mtu_findings
    findings += _findings_probes(facts)
    findings += _findings_setup(facts)
    findings.sort(key=lambda f: -_SEVERITY[f.severity])
    worst = _SEVERITY[findings[0].severity] if findings else 0
    verdict = VERDICTS[worst]
    if worst:
        top = findings[0]
        reason = f"{top.message}; next: {top.fix}" if top.fix else top.message
    else:
        reason = _ok_reason(facts, ex4)
    age, t1, renewed = _lease(facts, ex4)
    ra = facts.ra
    return Diagnosis(
        verdict=verdict,
        reason=reason,
        checked_at=facts.now,
        findings=tuple(findings),
        dhcp4=ex4,
        dhcp6=ex6,
        router_solicits=ra.solicits if ra is not None else 0,
        last_solicit_at=(ra.last_solicit or None) if ra is not None else None,
        router_adverts=ra.adverts if ra is not None else 0,
        last_advert_at=(ra.last_advert or None) if ra is not None else None,
        lease_age_s=age,
        renew_due_s=t1,
        renewed=renewed,
        mtu=mtu,
        probes=facts.probes,
    )


def _ok_reason(facts: NicFacts, ex4: Exchange | None) -> str:
    parts = []
    if ex4 is not None and ex4.last_kind == "ack":
        parts.append("the guest holds its DHCPv4 lease")
    answered = [p.target for p in facts.probes if p.answered and p.interface == facts.nic.tap.name]
    if answered:
        parts.append(f"answers at {', '.join(answered)}")
    if not parts:
        return "nothing wrong seen yet (the guest has not asked for an address so far)"
    return " and ".join(parts)


# ---- the probes and the cache ---------------------------------------------------------


def probe_targets(nic: NicPlan) -> list[tuple[str, object]]:
    """The (kind, target) pairs :class:`Doctor` probes for ``nic``."""
    out: list[tuple[str, object]] = []
    if nic.dhcp4 is not None and nic.dhcp4.leases:
        out.append(("guest4", nic.dhcp4.leases[0].address.ip))
    if nic.dhcp6 is not None and nic.dhcp6.leases:
        out.append(("guest6", nic.dhcp6.leases[0].address.ip))
    gw = nic.original.default_gateway(4)
    if gw is not None and gw.gateway is not None:
        out.append(("gateway4", gw.gateway))
    return out


def _probe(
    nic: NicPlan, kind: str, target: object, timeout: float, opener: LinkOpener | None = None
) -> ProbeResult:
    bridge_mac = nic.bridge.mac
    guest_mac = nic.device.mac.lower()
    if kind == "guest4":
        assert isinstance(target, ipaddress.IPv4Address)
        return arp_probe(
            nic.tap.name,
            target,
            source_mac=bridge_mac,
            timeout=timeout,
            expect_mac=guest_mac,
            opener=opener,
        )
    if kind == "guest6":
        assert isinstance(target, ipaddress.IPv6Address)
        return nd_probe(
            nic.tap.name,
            target,
            source_mac=bridge_mac,
            source_ip=link_local_from_mac(bridge_mac),
            timeout=timeout,
            expect_mac=guest_mac,
            opener=opener,
        )
    assert isinstance(target, ipaddress.IPv4Address)
    pod_mac = nic.pod_port.new_mac if nic.pod_port and nic.pod_port.new_mac else nic.original.mac
    own = None if nic.pod_port is not None else next(iter(nic.original.addresses4), None)
    return arp_probe(
        nic.pod_interface,
        target,
        source_mac=pod_mac,
        source_ip=None if own is None else own.ip,
        timeout=timeout,
        opener=opener,
    )


def _silent_after() -> float:
    """``SILENT_AFTER_S``, or ``$VIRT_LAUNCHER_DOCTOR_SILENT_S`` (docs/status.md) when it
    holds a positive number (a malformed value is ignored: this only tunes a diagnosis)."""
    raw = os.environ.get("VIRT_LAUNCHER_DOCTOR_SILENT_S", "")
    try:
        value = float(raw)
    except ValueError:
        return SILENT_AFTER_S
    return value if 0 < value < 86400 else SILENT_AFTER_S


class Doctor:
    """Probes on request, at most every ``max_age`` seconds; see the module docstring."""

    def __init__(
        self,
        *,
        max_age: float = 10.0,
        probe_timeout: float = 1.0,
        silent_after_s: float | None = None,
    ) -> None:
        self.max_age = max_age
        self.probe_timeout = probe_timeout
        self.silent_after_s = silent_after_s if silent_after_s is not None else _silent_after()
        self._probes: dict[str, tuple[ProbeResult, ...]] = {}
        self._at = 0.0
        #: Opens a probe's socket (None: in this process); the collector sets it from the
        #: run (the privileged helper once the launcher holds no capability).
        self.opener: LinkOpener | None = None

    def due(self) -> bool:
        """True when the last probes are older than ``max_age`` (a request must wait)."""
        return time.monotonic() - self._at >= self.max_age

    async def probe(
        self, nics: Sequence[NicPlan], running: bool, tentative: Collection[str] = ()
    ) -> None:
        """Probe every NIC (concurrently, each bounded by ``probe_timeout``). Addresses in
        ``tentative`` (bound moments ago, still in the guest's duplicate address detection)
        are not probed — they could only time out — and are probed again once
        ``DAD_GRACE_S`` has passed."""
        self._at = time.monotonic()
        if not running:
            self._probes = {}
            return
        probes: dict[str, list[ProbeResult]] = {}
        jobs = []
        for nic in nics:
            for kind, target in probe_targets(nic):
                if kind == "guest6" and str(target) in tentative:
                    skipped = ProbeResult(str(target), nic.tap.name, None, detail="not probed yet")
                    probes.setdefault(nic.name, []).append(skipped)
                    self._at = min(self._at, time.monotonic() - self.max_age + DAD_GRACE_S)
                    continue
                job = asyncio.to_thread(_probe, nic, kind, target, self.probe_timeout, self.opener)
                jobs.append((nic.name, job))
        results = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
        for (name, _), result in zip(jobs, results, strict=True):
            seen = (
                ProbeResult("?", name, None, detail=f"probe failed: {result}")
                if isinstance(result, BaseException)
                else result
            )
            probes.setdefault(name, []).append(seen)
        self._probes = {k: tuple(v) for k, v in probes.items()}

    def probes(self, nic: str) -> tuple[ProbeResult, ...]:
        """The last probes of ``nic``."""
        return self._probes.get(nic, ())

"""The network doctor's rules (launcher.status.doctor.diagnose is pure), one test per rule.

The e2e tier (tests/e2e/test_doctor.py) makes the main cases happen for real; these pin
every rule's trigger, severity, verdict and the next step it names, on a plan made by the
real planner from a hand-built pod.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from dhcp.ra import RaSnapshot
from dhcp.v4.server import Dhcp4Counters, Dhcp4Event, Dhcp4Snapshot
from dhcp.v6.server import Dhcp6Snapshot, Event6
from launcher.network import plan
from launcher.network.discover import PodLink
from launcher.network.linkstats import LinkCounters
from launcher.network.netlink import Route
from launcher.network.plan import NicPlan
from launcher.status.doctor import (
    DAD_GRACE_S,
    Diagnosis,
    Doctor,
    NicFacts,
    diagnose,
    fresh_addresses,
)
from launcher.status.probe import ProbeResult

from ..network.helpers import POD_MAC, pod_link, pod_state, vm_spec

NOW = 1_000_000.0


@pytest.fixture
def nic() -> NicPlan:
    return plan(vm_spec(), pod_state()).nics[0]


def link(name: str, mac: str = "02:00:00:00:00:01", mtu: int = 1450, **kw: int) -> LinkCounters:
    return LinkCounters(name, "up", 0, 0, 0, 0, mtu=mtu, mac=mac, **kw)


def v4(nic: NicPlan, *events: tuple[str, float], strangers: tuple = ()) -> Dhcp4Snapshot:
    assert nic.dhcp4 is not None
    return Dhcp4Snapshot(
        nic.dhcp4.interface,
        str(nic.dhcp4.server_address),
        True,
        Dhcp4Counters(),
        tuple(
            Dhcp4Event(
                NOW - ago,
                kind,
                POD_MAC,
                "10.244.1.5",
                1,
                "bad request" if kind in ("nak", "decline") else "",
            )
            for kind, ago in events
        ),
        strangers,
    )


def _reason(kind: str) -> str:
    return "bad request" if kind in ("nak", "decline") else ""


def facts(nic: NicPlan, **kw: object) -> NicFacts:
    base: dict[str, object] = {
        "nic": nic,
        "now": NOW,
        "vmm_running": True,
        "vmm_state": "running",
        "running_since": NOW - 300,
        "tap": link(nic.tap.name),
        "pod_link": link(nic.pod_interface, mtu=1450),
        "pod_links": (link(nic.pod_interface, mtu=1450),),
    }
    base.update(kw)
    return NicFacts(**base)  # type: ignore[arg-type]


def guest_probe(nic: NicPlan, answered: bool, mac: str | None = None) -> ProbeResult:
    return ProbeResult("10.244.1.5", nic.tap.name, answered, mac, 0.2 if answered else None)


def only(d: Diagnosis) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in d.findings]


def test_healthy_guest_is_ok(nic: NicPlan) -> None:
    d = diagnose(
        facts(
            nic,
            dhcp4=v4(nic, ("offer", 200), ("ack", 199)),
            probes=(guest_probe(nic, True, POD_MAC),),
        )
    )
    assert d.verdict == "ok" and d.findings == ()
    assert d.reason == "the guest holds its DHCPv4 lease and answers at 10.244.1.5"
    assert d.lease_age_s == 199 and d.renew_due_s == 43200 and d.renewed is False
    assert d.dhcp4 is not None and d.dhcp4.last_kind == "ack"


def test_vm_not_running(nic: NicPlan) -> None:
    d = diagnose(facts(nic, vmm_running=False, vmm_state="paused"))
    assert d.verdict == "no-network" and ("vm-not-running", "error") in only(d)
    assert "paused" in d.reason


def test_no_dhcp_traffic_only_after_the_bound(nic: NicPlan) -> None:
    early = diagnose(facts(nic, dhcp4=v4(nic), running_since=NOW - 10))
    assert early.verdict == "ok" and "not asked" in early.reason
    late = diagnose(facts(nic, dhcp4=v4(nic), running_since=NOW - 61))
    assert late.verdict == "no-network" and only(late) == [("no-dhcp-traffic", "error")]
    assert "10.244.1.5" in late.reason and "no DHCP client" in late.reason
    custom = diagnose(facts(nic, dhcp4=v4(nic), running_since=NOW - 6, silent_after_s=5))
    assert only(custom) == [("no-dhcp-traffic", "error")]


def test_unknown_mac_from_the_server_and_from_the_tap(nic: NicPlan) -> None:
    d = diagnose(facts(nic, dhcp4=v4(nic, strangers=(("02:de:ad:00:00:01", 4, NOW),))))
    assert only(d) == [("unknown-mac", "error")] and d.verdict == "no-network"
    assert "4 DHCP request(s) from MAC 02:de:ad:00:00:01" in d.reason
    assert "macAddress: 02:de:ad:00:00:01" in d.reason and POD_MAC in d.reason
    seen = replace(guest_probe(nic, False), strangers=(("02:de:ad:00:00:02", "dhcp"),))
    d = diagnose(facts(nic, dhcp4=v4(nic), probes=(seen,)))
    assert [c for c, _ in only(d)] == ["unknown-mac", "guest-silent"]
    assert "DHCP requests from MAC 02:de:ad:00:00:02" in d.reason


def test_nak_is_degraded_decline_is_no_network(nic: NicPlan) -> None:
    nak = diagnose(facts(nic, dhcp4=v4(nic, ("nak", 5))))
    assert only(nak) == [("dhcp-nak", "warning")] and nak.verdict == "degraded"
    decline = diagnose(facts(nic, dhcp4=v4(nic, ("ack", 9), ("decline", 8))))
    assert only(decline) == [("dhcp-decline", "error")] and "answers ARP" in decline.reason


def test_offer_not_taken(nic: NicPlan) -> None:
    assert diagnose(facts(nic, dhcp4=v4(nic, ("offer", 10)))).findings == ()
    d = diagnose(facts(nic, dhcp4=v4(nic, ("offer", 31))))
    assert only(d) == [("offer-not-taken", "error")] and "never REQUESTed" in d.reason


def test_lease_not_renewed_past_t1(nic: NicPlan) -> None:
    assert diagnose(facts(nic, dhcp4=v4(nic, ("ack", 43200)))).findings == ()
    d = diagnose(facts(nic, dhcp4=v4(nic, ("ack", 50000))))
    assert only(d) == [("lease-not-renewed", "warning")] and d.verdict == "degraded"
    renewed = diagnose(facts(nic, dhcp4=v4(nic, ("ack", 50000), ("ack", 7000))))
    assert renewed.findings == () and renewed.renewed is True


def test_no_dhcp6_with_the_ra_solicited(nic: NicPlan) -> None:
    assert nic.dhcp6 is not None
    v6 = Dhcp6Snapshot(nic.dhcp6.interface, "00", {}, ())
    ra = RaSnapshot(2, 5, 0, 0, 0, NOW - 1, NOW - 100, POD_MAC)
    d = diagnose(facts(nic, dhcp4=v4(nic, ("ack", 100)), dhcp6=v6, ra=ra))
    assert only(d) == [("no-dhcp6", "warning")] and "solicit" in d.reason
    assert d.router_solicits == 2 and d.last_solicit_at == NOW - 100
    bound = Dhcp6Snapshot(
        nic.dhcp6.interface, "00", {}, (Event6(NOW - 5, "bound", POD_MAC, "01", "fd00::5"),)
    )
    assert diagnose(facts(nic, dhcp4=v4(nic, ("ack", 100)), dhcp6=bound, ra=ra)).findings == ()


def test_mtu_changed_and_too_large(nic: NicPlan) -> None:
    d = diagnose(facts(nic, tap=link(nic.tap.name, mtu=1300)))
    assert only(d) == [("mtu-changed", "warning")] and "1300" in d.reason and "1450" in d.reason
    assert d.mtu == {"pod": 1450, "tap": 1300, "planned": 1450, "dhcp4": 1450, "ra": 1450}
    small_pod = diagnose(facts(nic, pod_link=link(nic.pod_interface, mtu=1400)))
    assert only(small_pod) == [("mtu-too-large", "warning")] and "lower" in small_pod.reason


def test_tap_drops_are_told_not_blamed(nic: NicPlan) -> None:
    d = diagnose(facts(nic, tap=link(nic.tap.name, tx_dropped=7)))
    assert only(d) == [("tap-drops", "info")] and d.verdict == "ok"


def test_pod_interface_gone_or_renamed(nic: NicPlan) -> None:
    gone = diagnose(facts(nic, pod_link=None, pod_links=(link("lo"),)))
    assert only(gone) == [("pod-interface-gone", "error")]
    assert nic.pod_port is not None and nic.pod_port.new_mac is not None
    moved = link("eth9", mac=nic.pod_port.new_mac)
    renamed = diagnose(facts(nic, pod_link=None, pod_links=(moved,)))
    assert only(renamed) == [("pod-interface-renamed", "error")] and "'eth9'" in renamed.reason


def test_probes(nic: NicPlan) -> None:
    silent = diagnose(facts(nic, probes=(guest_probe(nic, False),)))
    assert only(silent) == [("guest-silent", "error")] and "frozen" in silent.reason
    six = ProbeResult("fd00:10:244:1::5", nic.tap.name, False, detail="no answer")
    half = diagnose(facts(nic, probes=(guest_probe(nic, True, POD_MAC), six)))
    assert only(half) == [("guest-silent", "warning")] and half.verdict == "degraded"
    assert "ND for fd00:10:244:1::5" in half.reason
    bound = Event6(NOW - 1.5, "bound", POD_MAC, "01", "fd00:10:244:1::5")
    assert nic.dhcp6 is not None
    v6 = Dhcp6Snapshot(nic.dhcp6.interface, "00", {}, (bound,))
    dad = diagnose(facts(nic, dhcp6=v6, probes=(guest_probe(nic, True, POD_MAC), six)))
    assert only(dad) == [("address-in-dad", "info")] and dad.verdict == "ok"
    later = replace(bound, at=NOW - 6)
    v6 = Dhcp6Snapshot(nic.dhcp6.interface, "00", {}, (later,))
    stale = diagnose(facts(nic, dhcp6=v6, probes=(guest_probe(nic, True, POD_MAC), six)))
    assert only(stale) == [("guest-silent", "warning")]
    other = diagnose(facts(nic, probes=(guest_probe(nic, True, "02:11:22:33:44:55"),)))
    assert only(other) == [("guest-mac-mismatch", "error")]
    gateway = ProbeResult("10.244.1.1", nic.pod_interface, False, detail="no answer")
    assert only(diagnose(facts(nic, probes=(gateway,)))) == [("gateway-silent", "warning")]
    none = ProbeResult("10.244.1.1", nic.pod_interface, None, detail="no probe: EPERM")
    d = diagnose(facts(nic, probes=(none,)))
    assert only(d) == [("probe-unavailable", "info")] and d.verdict == "ok"


def test_calico_32_is_named_not_blamed() -> None:
    gw = ipaddress.ip_address("169.254.1.1")
    calico = replace(
        pod_link(),
        addresses4=(ipaddress.IPv4Interface("10.244.1.5/32"),),
        routes=(
            Route(ipaddress.ip_network("169.254.1.1/32"), None, "eth0"),
            Route(ipaddress.ip_network("0.0.0.0/0"), gw, "eth0"),
        ),
    )
    nic = plan(vm_spec(), pod_state(calico)).nics[0]
    d = diagnose(facts(nic))
    assert only(d) == [("calico-32", "info")] and d.verdict == "ok"


def test_doctor_probes_only_when_due(nic: NicPlan, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    calls: list[str] = []

    def fake(
        nic_: NicPlan, kind: str, target: object, timeout: float, opener: object = None
    ) -> ProbeResult:
        assert opener is doctor.opener  # the run's opener (the helper's, after the drop)
        calls.append(kind)
        return ProbeResult(str(target), nic_.tap.name, True, POD_MAC)

    monkeypatch.setattr("launcher.status.doctor._probe", fake)
    doctor = Doctor(max_age=10.0)
    assert doctor.due()
    asyncio.run(doctor.probe([nic], running=True))
    assert sorted(calls) == ["gateway4", "guest4", "guest6"] and not doctor.due()
    assert {p.target for p in doctor.probes(nic.name)} == {
        "10.244.1.5",
        "fd00:10:244:1::5",
        "10.244.1.1",
    }
    asyncio.run(doctor.probe([nic], running=False))
    assert doctor.probes(nic.name) == () and len(calls) == 3  # no probe of a stopped VM
    # an IPv6 address bound moments ago is not probed (it could only time out) and the
    # doctor is due again once the DAD grace has passed, not after the full 10 s
    calls.clear()
    asyncio.run(doctor.probe([nic], running=True, tentative={"fd00:10:244:1::5"}))
    assert sorted(calls) == ["gateway4", "guest4"]
    six = [p for p in doctor.probes(nic.name) if p.target == "fd00:10:244:1::5"]
    assert [(p.answered, p.interface) for p in six] == [(None, nic.tap.name)]
    assert not doctor.due()
    doctor._at -= DAD_GRACE_S
    assert doctor.due()
    v6 = Dhcp6Snapshot(
        "vlbr0", "00", {}, (Event6(NOW - 1, "bound", POD_MAC, "01", "fd00:10:244:1::5"),)
    )
    d = diagnose(facts(nic, dhcp6=v6, probes=doctor.probes(nic.name)))
    assert ("address-in-dad", "info") in only(d) and d.verdict == "ok"
    assert fresh_addresses(v6, NOW) == {"fd00:10:244:1::5": 1}
    assert fresh_addresses(v6, NOW + DAD_GRACE_S) == {}


def test_silent_bound_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRT_LAUNCHER_DOCTOR_SILENT_S", "7.5")
    assert Doctor().silent_after_s == 7.5
    monkeypatch.setenv("VIRT_LAUNCHER_DOCTOR_SILENT_S", "nonsense")
    assert Doctor().silent_after_s == 60.0


def test_pod_link_helper_unused_default() -> None:
    # the helpers' default pod link is what the fixture plans against
    assert isinstance(pod_link(), PodLink) and pod_link().mac == POD_MAC

"""Masquerade port ranges (KubeVirt VEP 168 ``portRanges``): spec rules with exact path +
message (overlaps name both sides), and the interval sets in the one nftables document."""

from __future__ import annotations

import pytest

from launcher.errors import SpecError
from launcher.network import PlanOptions, plan
from launcher.network.nftables import render
from launcher.spec.model import Masquerade, Port, PortRange, Protocol
from tests.unit.network.helpers import pod_state, vm_spec
from tests.unit.spec.helpers import DEV, kubevirt_vm, ok, problems, vmi_of

IFACE = f"{DEV}.interfaces[0]"


def doc_with(**extra: object) -> dict[str, object]:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0].update(extra)
    return doc


def test_ranges_are_read_next_to_ports() -> None:
    spec = ok(
        doc_with(
            ports=[{"port": 80}],
            portRanges=[
                {"protocol": "TCP", "start": 8000, "end": 8100},
                {"protocol": "udp", "start": 5000, "end": 5000},
            ],
        )
    )
    binding = spec.interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert binding.ports == (Port(80),)
    assert binding.port_ranges == (
        PortRange(8000, 8100, Protocol.TCP),
        PortRange(5000, 5000, Protocol.UDP),
    )


@pytest.mark.parametrize(
    ("ranges", "ports", "line"),
    [
        (
            [{"start": 8000, "end": 7999}],
            [],
            f"{IFACE}.portRanges[0].end: 7999 is below start 8000",
        ),
        (
            [{"start": 8000, "end": 8100}, {"start": 8100, "end": 8200}],
            [],
            f"{IFACE}.portRanges[1]: TCP 8100-8200 overlaps TCP 8000-8100 of {IFACE}.portRanges[0]",
        ),
        (
            [{"start": 8000, "end": 8100}],
            [{"port": 22}, {"port": 8080}],
            f"{IFACE}.portRanges[0]: TCP 8000-8100 overlaps TCP port 8080 of {IFACE}.ports[1]",
        ),
        (
            [{"start": 49000, "end": 49999, "protocol": "UDP"}],
            [],
            f"{IFACE}.portRanges[0]: UDP 49000-49999 overlaps port 49152, which the pod "
            "itself uses (KubeVirt migration)",
        ),
        (
            [{"start": 8180, "end": 8190}],
            [],
            f"{IFACE}.portRanges[0]: TCP 8180-8190 overlaps port 8186, which the pod itself "
            "uses (the launcher's status endpoint)",
        ),
        (
            [{"start": 0, "end": 10}],
            [],
            f"{IFACE}.portRanges[0].start: 0 is less than 1",
        ),
        (
            [{"start": 10, "end": 10, "protocol": "SCTP"}],
            [],
            f'{IFACE}.portRanges[0].protocol: "SCTP" is not one of TCP, UDP',
        ),
    ],
)
def test_range_problems(ranges: list[object], ports: list[object], line: str) -> None:
    assert problems(doc_with(portRanges=ranges, ports=ports)) == [line]


def test_other_protocol_does_not_overlap() -> None:
    ok(
        doc_with(
            ports=[{"port": 8080, "protocol": "UDP"}], portRanges=[{"start": 8000, "end": 8100}]
        )
    )


def test_istio_ports_only_when_injected() -> None:
    ranges = [{"start": 15000, "end": 15010}]
    ok(doc_with(portRanges=ranges))
    doc = doc_with(portRanges=ranges)
    doc["spec"]["template"]["metadata"]["annotations"] = {"sidecar.istio.io/inject": "true"}
    assert problems(doc) == [
        f"{IFACE}.portRanges[0]: TCP 15000-15010 overlaps port 15000, which the pod itself "
        "uses (the Istio sidecar)"
    ]


def test_ranges_need_masquerade() -> None:
    doc = doc_with(portRanges=[{"start": 8000, "end": 8100}])
    iface = vmi_of(doc)["domain"]["devices"]["interfaces"][0]
    del iface["masquerade"]
    iface["bridge"] = {}
    assert problems(doc) == [
        f"{IFACE}.portRanges: port ranges are only forwarded with the masquerade binding, "
        "not bridge"
    ]


# --------------------------------------------------------------------------- plan


def masq(ports: tuple[Port, ...], ranges: tuple[PortRange, ...]) -> Masquerade:
    return Masquerade(ports=ports, port_ranges=ranges)


def test_interval_sets_in_the_one_document() -> None:
    spec = vm_spec(
        masq((Port(80), Port(53, Protocol.UDP)), (PortRange(8000, 8100), PortRange(9000, 9000)))
    )
    doc = render([plan(spec, pod_state()).nics[0].nft])
    assert (
        "set tcp0 { type inet_service; flags interval; elements = { 80, 8000-8100, 9000 } }" in doc
    )
    assert "set udp0 { type inet_service; elements = { 53 } }" in doc
    assert "tcp dport @tcp0 dnat ip to 10.0.2.2" in doc


def test_ports_only_keep_a_plain_set() -> None:
    doc = render([plan(vm_spec(masq((Port(80),), ())), pod_state()).nics[0].nft])
    assert "set tcp0 { type inet_service; elements = { 80 } }" in doc


def test_plan_checks_the_status_port_it_really_uses() -> None:
    spec = vm_spec(masq((), (PortRange(9000, 9100),)))
    plan(spec, pod_state())  # the default status port 8186 is outside
    with pytest.raises(SpecError) as info:
        plan(spec, pod_state(), PlanOptions(status_port=9050))
    assert info.value.lines() == [
        "spec.instance.interfaces[0].portRanges[0]: TCP 9000-9100 overlaps port 9050, which "
        "the pod itself uses (the launcher's status endpoint)"
    ]

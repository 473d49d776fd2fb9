"""Masquerade ``ports`` on a port the pod itself uses (the status endpoint, 49152/49153,
Istio's when injected) are refused at ``validate`` (exit 2) with the field's path, the
value and what reserves it, like ``portRanges``; ``plan``/``run`` check again against
the status port really configured; ``validate`` never accepts what ``plan`` refuses."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from launcher.cli import main
from launcher.errors import SpecError
from launcher.machine import forwarded_port_problems
from launcher.network import PlanOptions, plan
from launcher.spec import parse
from launcher.spec.model import Masquerade, Port, PortRange, Protocol
from tests.unit.network.helpers import pod_state, vm_spec
from tests.unit.spec.helpers import DEV, kubevirt_vm, ok, problems, vmi_of

IFACE = f"{DEV}.interfaces[0]"
VMI = "spec.domain.devices.interfaces[0]"


def doc_with(**extra: object) -> dict[str, object]:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0].update(extra)
    return doc


@pytest.mark.parametrize(
    ("ports", "line"),
    [
        (
            [{"port": 80}, {"port": 49152}],
            f"{IFACE}.ports[1].port: 49152 is a port the pod itself uses (KubeVirt migration)",
        ),
        (
            [{"port": 49153, "protocol": "UDP"}],
            f"{IFACE}.ports[0].port: 49153 is a port the pod itself uses (KubeVirt migration)",
        ),
        (
            [{"port": 8186, "name": "http"}],
            f"{IFACE}.ports[0].port: 8186 is a port the pod itself uses "
            "(the launcher's status endpoint)",
        ),
    ],
)
def test_reserved_port_is_a_validation_error(ports: list[object], line: str) -> None:
    assert problems(doc_with(ports=ports)) == [line]


def test_every_reserved_port_is_reported_once_with_ranges() -> None:
    doc = doc_with(
        ports=[{"port": 8186}, {"port": 22}, {"port": 49152, "protocol": "UDP"}],
        portRanges=[{"start": 49100, "end": 49200}],
    )
    assert problems(doc) == [
        f"{IFACE}.ports[0].port: 8186 is a port the pod itself uses "
        "(the launcher's status endpoint)",
        f"{IFACE}.ports[2].port: 49152 is a port the pod itself uses (KubeVirt migration)",
        f"{IFACE}.portRanges[0]: TCP 49100-49200 overlaps port 49152, which the pod itself "
        "uses (KubeVirt migration)",
    ]


def test_istio_ports_only_when_injected() -> None:
    ok(doc_with(ports=[{"port": 15001}]))
    doc = doc_with(ports=[{"port": 15001}])
    doc["spec"]["template"]["metadata"]["annotations"] = {"sidecar.istio.io/inject": "true"}
    assert problems(doc) == [
        f"{IFACE}.ports[0].port: 15001 is a port the pod itself uses (the Istio sidecar)"
    ]


def test_plan_checks_the_status_port_it_really_uses() -> None:
    spec = vm_spec(Masquerade(ports=(Port(80), Port(9050, Protocol.UDP))))
    plan(spec, pod_state())  # the default status port 8186 is not listed
    with pytest.raises(SpecError) as info:
        plan(spec, pod_state(), PlanOptions(status_port=9050))
    assert info.value.lines() == [
        "spec.instance.interfaces[0].ports[1].port: 9050 is a port the pod itself uses "
        "(the launcher's status endpoint)"
    ]


def test_plan_lists_every_clash_of_a_spec_built_in_code() -> None:
    spec = vm_spec(Masquerade(ports=(Port(49153),), port_ranges=(PortRange(8000, 8200),)))
    with pytest.raises(SpecError) as info:
        plan(spec, pod_state())
    assert info.value.lines() == [
        "spec.instance.interfaces[0].ports[0].port: 49153 is a port the pod itself uses "
        "(KubeVirt migration)",
        "spec.instance.interfaces[0].portRanges[0]: TCP 8000-8200 overlaps port 8186, which "
        "the pod itself uses (the launcher's status endpoint)",
    ]


# --- validate never accepts what plan/run refuse ----------------------------------------

NUMBERS = (22, 80, 8186, 9050, 15001, 49152, 49153)
RANGES = ((8000, 8100), (8100, 8200), (9000, 9100), (15000, 15010), (20000, 20100), (49000, 49999))


def _validate_ok(doc: dict[str, object], status_port: int) -> bool:
    try:
        spec = parse(doc)
    except SpecError:
        return False
    return not forwarded_port_problems(spec, status_port)


def _plan_ok(doc: dict[str, object], status_port: int) -> bool:
    try:
        plan(parse(doc), pod_state(), PlanOptions(status_port=status_port))
    except SpecError:
        return False
    return True


@pytest.mark.parametrize("status_port", [8186, 9050])
@pytest.mark.parametrize("istio", [False, True])
def test_validate_never_accepts_what_plan_refuses(status_port: int, istio: bool) -> None:
    checked = 0
    for number, (start, end), proto in itertools.product(NUMBERS, RANGES, ("TCP", "UDP")):
        doc = doc_with(
            ports=[{"port": number, "protocol": proto}],
            portRanges=[{"start": start, "end": end, "protocol": proto}],
        )
        if istio:
            doc["spec"]["template"]["metadata"]["annotations"] = {  # type: ignore[index]
                "sidecar.istio.io/inject": "true"
            }
        if _validate_ok(doc, status_port):
            checked += 1
            assert _plan_ok(doc, status_port), (number, start, end, proto, status_port)
    assert checked >= 8  # some specs were accepted, so the implication was tested


# --- the command line ---------------------------------------------------------------------


def _spec_file(tmp_path: Path, ports: list[dict[str, object]]) -> str:
    doc = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm"},
        "spec": {
            "domain": {
                "memory": {"guest": "512Mi"},
                "devices": {"interfaces": [{"name": "default", "masquerade": {}, "ports": ports}]},
            },
            "networks": [{"name": "default", "pod": {}}],
        },
    }
    path = tmp_path / "vm.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_validate_exit_2_names_the_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec_file(tmp_path, [{"port": 80}, {"port": 49152}])
    assert main(["validate", "--spec", spec]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{VMI}.ports[1].port: 49152 is a port the pod itself uses (KubeVirt migration)\n"
    )


def test_validate_plan_and_run_with_another_status_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec_file(tmp_path, [{"port": 9050}])
    assert main(["validate", "--spec", spec]) == 0
    capsys.readouterr()
    line = (
        f"{VMI}.ports[0].port: 9050 is a port the pod itself uses "
        "(the launcher's status endpoint)\n"
    )
    assert main(["validate", "--spec", spec, "--status-listen", "127.0.0.1:9050"]) == 2
    assert capsys.readouterr() == ("", line)
    assert main(["plan", "--offline", "--spec", spec]) == 0
    capsys.readouterr()
    assert main(["plan", "--offline", "--spec", spec, "--status-listen", "127.0.0.1:9050"]) == 2
    _, err = capsys.readouterr()
    assert "9050 is a port the pod itself uses" in err
    # a unix-socket status endpoint has no port: only the default rules apply
    assert main(["validate", "--spec", spec, "--status-listen", str(tmp_path / "s.sock")]) == 0


def test_run_refuses_a_reserved_port_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec_file(tmp_path, [{"port": 49153}])
    state = tmp_path / "state"
    code = main(["run", "--spec", spec, "--state-dir", str(state)])
    _, err = capsys.readouterr()
    assert code == 2
    assert "ports[0].port: 49153 is a port the pod itself uses (KubeVirt migration)" in err
    assert not state.exists()

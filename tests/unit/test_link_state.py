"""Interface link state (``state: down``/``up``): spec rules with exact path + message,
the hypervisor checks, the QEMU argv (started paused to take the carrier away before the
guest runs), and the hot-plug diff's SetLink actions."""

from __future__ import annotations

from typing import Any

import pytest

from hypervisor.machine import MachineConfig, NetDevice
from hypervisor.qemu.argv import QemuRuntime, build_argv
from launcher.hotplug.diff import NeedsRestart, SetLink, diff
from launcher.machine import link_state_problems, net_device
from launcher.network import plan
from launcher.spec import parse
from launcher.spec.model import InterfaceState
from tests.unit.hotplug.test_diff import BLUE, POD, base_doc, status, with_secondary
from tests.unit.network.helpers import pod_state
from tests.unit.spec.helpers import VM

IFACES = f"{VM}.domain.devices.interfaces"


def doc(state: str | None = None, **extra: Any) -> dict[str, Any]:
    return with_secondary(base_doc(), **({"state": state} if state else {}), **extra)


def test_down_is_read() -> None:
    spec = parse(doc("down"))
    assert spec.interfaces[1].state is InterfaceState.DOWN


def test_cloud_hypervisor_refuses_down() -> None:
    assert [str(p) for p in link_state_problems(parse(doc("down")), "cloud-hypervisor")] == [
        f'{IFACES}[1].state: "down" is not supported by cloud-hypervisor, which has no '
        "link-state API (the guest would keep its carrier; run QEMU)"
    ]
    assert link_state_problems(parse(doc("down")), "qemu") == []


def test_passthrough_refuses_down() -> None:
    assert [str(p) for p in link_state_problems(parse(doc("down", binding="sriov")), "qemu")] == [
        f'{IFACES}[1].state: "down" is not supported for a sriov interface: only tap-backed '
        "(bridge, masquerade) NICs have a link the launcher sets"
    ]


def test_plan_and_argv_start_the_nic_without_carrier() -> None:
    spec = parse(doc())
    down = parse({**base_doc(), "spec": _with_state(base_doc()["spec"], "down")})
    (nic,) = plan(down, pod_state()).devices
    assert nic.link_up is False
    argv = build_argv(
        MachineConfig(name="vm", vcpus=1, memory_bytes=1 << 28, nets=(net_device(nic),)),
        QemuRuntime(qmp_socket="/q"),
    )
    assert "-S" in argv  # paused until set_link has taken the carrier away
    up = build_argv(
        MachineConfig(
            name="vm",
            vcpus=1,
            memory_bytes=1 << 28,
            nets=(NetDevice("net0", "t", "02:00:00:00:00:01", 1500),),
        ),
        QemuRuntime(qmp_socket="/q"),
    )
    assert "-S" not in up
    assert spec.interfaces[0].state is InterfaceState.UP


def _with_state(spec: dict[str, Any], state: str) -> dict[str, Any]:
    template = spec["template"]["spec"]
    template["domain"]["devices"]["interfaces"][0]["state"] = state
    return spec


@pytest.mark.parametrize(("before", "after", "up"), [("up", "down", False), ("down", "up", True)])
def test_state_flip_is_a_set_link(before: str, after: str, up: bool) -> None:
    running, new = parse(doc(before)), parse(doc(after))
    d = diff(running, new, status(POD, BLUE), ["eth0", "pod16477688c0e"])
    assert d.links == (SetLink(new.interfaces[1], up),)
    assert not d.plug and not d.unplug and not d.needs_restart and not d.empty


def test_unchanged_state_sets_nothing() -> None:
    d = diff(parse(doc("down")), parse(doc("down")), status(POD, BLUE), ["eth0", "pod16477688c0e"])
    assert d.empty


def test_mtu_change_needs_a_restart() -> None:
    d = diff(parse(doc(mtu=1400)), parse(doc(mtu=1300)), status(POD, BLUE), ["eth0"])
    assert d.needs_restart == (NeedsRestart("interface 'sec'", "mtu changed from 1400 to 1300"),)

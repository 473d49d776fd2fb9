"""The hot-plug manager driving the real CloudHypervisor adapter against the fake VMM.

The fake ``cloud-hypervisor`` enforces the OpenAPI contract (vm.add-net with the tap
fds, vm.remove-device by id) and records what it received. The spec and podinfo files
are real files replaced by kubelet-style ``..data`` swaps. The pod netns is the one
boundary faked here (:class:`RecordingPlumbing`, real plans from ``launcher.network``
against a described pod); the integration/e2e tiers use the real plumbing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from dhcp.sockets import SocketRequest, open_socket
from hypervisor.cloud_hypervisor.adapter import CloudHypervisor
from hypervisor.machine import KernelBoot, MachineConfig, NetDevice, VfioDevice
from launcher.errors import HypervisorError
from launcher.hotplug.manager import HotplugState, Manager
from launcher.hotplug.watch import Watcher
from launcher.network import ApplyResult, NetworkPlan, PlanOptions, plan
from launcher.network.devices import GuestVfio
from launcher.network.discover import PodState
from launcher.nics import Nics
from launcher.options import RunOptions
from launcher.spec import parse
from launcher.status.model import StatusBoard
from tests.component.cloud_hypervisor.test_adapter import PipeTaps, recorded
from tests.unit.network.fake_sysfs import FakeHost
from tests.unit.network.helpers import pod_link, pod_state

from .atomic import atomic_write

SEC_LINK = "podadd93534eeb"  # KubeVirt's hashed pod interface name for network "sec"


def doc(*, sec: str | None = None, memory: str = "1Gi", binding: str = "bridge") -> dict[str, Any]:
    interfaces: list[dict[str, Any]] = [{"name": "default", "bridge": {}}]
    networks: list[dict[str, Any]] = [{"name": "default", "pod": {}}]
    if sec is not None:
        iface: dict[str, Any] = {"name": "sec", binding: {}}
        if sec == "absent":
            iface["state"] = "absent"
        interfaces.append(iface)
        networks.append({"name": "sec", "multus": {"networkName": "blue"}})
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns"},
        "spec": {
            "domain": {"devices": {"interfaces": interfaces}, "memory": {"guest": memory}},
            "networks": networks,
        },
    }


def hotplug_requests(data: dict[str, Any]) -> list[list[Any]]:
    """add-net/remove-device requests after the boot (the boot NIC is one vm.add-net)."""
    out: list[list[Any]] = []
    boot = True
    for r in data["requests"]:
        if r[1] == "vm.add-net" and boot:
            boot = False
        elif r[1] in ("vm.add-net", "vm.add-device", "vm.remove-device"):
            out.append(r)
    return out


def state(m: Manager, name: str) -> HotplugState | None:
    """The state now (a function, so mypy does not narrow it across awaits)."""
    st = m.status.get(name)
    return st.state if st is not None else None


def network_status(*, sec: bool) -> bytes:
    entries = [{"name": "cni", "interface": "eth0", "default": True}]
    if sec:
        entries.append({"name": "ns/blue", "interface": SEC_LINK, "mac": "0a:58:0a:00:00:09"})
    value = json.dumps(entries)
    return f"k8s.v1.cni.cncf.io/network-status={json.dumps(value)}\n".encode()


class RecordingRunner:
    """The pod netns boundary (a :class:`launcher.nics.PodRunner`): a described pod;
    apply/cleanup recorded. Plans are the real ones (``launcher.machine.plan_nic``)."""

    def __init__(self, pod: PodState, taps: PipeTaps | None = None) -> None:
        self.pod = pod
        self.taps = taps
        self.applied: list[str] = []
        self.removed: list[tuple[str, tuple[str, ...]]] = []
        self.nics: Nics | None = None

    async def discover(self) -> PodState:
        return self.pod

    async def apply(self, plan: NetworkPlan) -> ApplyResult:
        self.applied += [n.name for n in plan.nics]
        return ApplyResult(changes=len(plan.nics))

    async def cleanup(self, plan: NetworkPlan) -> None:
        assert self.nics is not None
        for nic in plan.nics:
            self.removed.append((nic.name, tuple(p.name for p in self.nics.plans)))

    async def open_tap(self, name: str, queues: int) -> list[int]:
        assert self.taps is not None
        return self.taps(name, queues)

    async def open_socket(self, request: SocketRequest) -> socket.socket:
        return open_socket(request)


class NodeSysfs:
    """The real adapter, except that a VF's path is the node's /sys view: the fake host
    tree of the planner lives in a temp dir, the VMM contract wants /sys/bus/pci/…"""

    def __init__(self, inner: CloudHypervisor) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def add_vfio(self, dev: VfioDevice) -> None:
        real = "/sys/bus/pci/devices/" + Path(dev.sysfs_path).name
        await self.inner.add_vfio(replace(dev, sysfs_path=real))


class Setup:
    def __init__(self, root: Path, vmm: CloudHypervisor, runner: RecordingRunner) -> None:
        self.spec_dir, self.info_dir = root / "spec", root / "podinfo"
        self.vmm = vmm
        self.runner = runner
        self.write(doc(), network_status(sec=False))
        running = parse(doc())
        self.plan = plan(running, runner.pod, PlanOptions())
        self.options = RunOptions(
            spec_path=self.spec_dir / "vm.yaml", podinfo=self.info_dir, state_dir=root / "state"
        )
        self.board = StatusBoard()
        self.nics = Nics(runner, state_dir=root / "state")
        self.nics.bind(lambda coro, name: asyncio.create_task(coro, name=name))
        runner.nics = self.nics
        self.manager = Manager(
            running,
            self.plan,
            NodeSysfs(vmm),  # type: ignore[arg-type]
            self.nics,
            options=self.options,
            board=self.board,
            step_timeout_s=10.0,
        )
        self.watcher = Watcher(self.manager.watched_files(), interval_s=0.05, debounce_s=0.05)
        self.watcher.baseline()

    async def boot(self) -> None:
        """The boot NIC is wired like the run does it (no servers: no real bridge here)."""
        for nic in self.plan.nics:
            await self.nics.add(nic, serve=False, critical=True)
        self.runner.applied.clear()

    def write(self, spec: dict[str, Any] | str, ann: bytes | None = None) -> None:
        text = spec if isinstance(spec, str) else yaml.safe_dump(spec)
        atomic_write(self.spec_dir, {"vm.yaml": text.encode()})
        if ann is not None:
            atomic_write(self.info_dir, {"annotations": ann})

    async def change(self) -> None:
        """Wait for the watcher's next settled change and hand it to the manager."""
        async with asyncio.timeout(5):
            snapshot = await anext(self.watcher.changes())
        await self.manager.handle(snapshot)


@pytest.fixture
async def hp(
    tmp_path: Path, binary: str, sock_dir: str, taps: PipeTaps, record: Path
) -> AsyncIterator[Setup]:
    vmm = CloudHypervisor(
        binary=binary,
        api_socket=f"{sock_dir}/api.sock",
        api_timeout=5.0,
        socket_timeout=10.0,
        stop_timeout=5.0,
        tap_opener=taps,
    )
    pod = pod_state(pod_link(), pod_link(SEC_LINK, v4=None, v6=None, gw4=None, gw6=None))
    s = Setup(tmp_path, vmm, RecordingRunner(pod, taps))
    await s.boot()
    nic = s.plan.nics[0]
    await vmm.start(
        MachineConfig(
            name="vm1",
            vcpus=1,
            memory_bytes=1 << 30,
            kernel=KernelBoot(kernel="/boot/vmlinuz", cmdline="console=ttyS0"),
            nets=(NetDevice(nic.device.id, nic.tap.name, nic.device.mac, nic.device.mtu),),
        )
    )
    try:
        yield s
    finally:
        if vmm.pid is not None:
            await vmm.stop()


async def test_plug_then_unplug_by_state_absent(hp: Setup, record: Path) -> None:
    m = hp.manager
    hp.write(doc(sec="up"), network_status(sec=True))
    await hp.change()
    assert state(m, "sec") is HotplugState.PLUGGED, m.status["sec"]
    assert m.status["default"].state is HotplugState.BOOT
    assert hp.runner.applied == ["sec"]
    owner = hp.nics.get("sec")
    assert owner is not None and owner.servers == ()  # no IPAM on "sec": nothing to serve
    new_id = owner.plan.device.id
    assert new_id != hp.plan.nics[0].device.id
    assert [i.name for i in m.spec.interfaces] == ["default", "sec"]
    assert hp.board.plan is not None and [n.name for n in hp.board.plan.nics] == ["default", "sec"]
    assert hp.board.hotplug == {"default": ("boot", None), "sec": ("plugged", None)}

    hp.write(doc(sec="absent"))
    await hp.change()
    assert state(m, "sec") is HotplugState.UNPLUGGED, m.status["sec"]
    assert hp.runner.removed == [("sec", ("default",))]
    assert "sec" not in hp.nics and [i.name for i in m.spec.interfaces] == ["default"]
    assert hp.board.plan is not None and [n.name for n in hp.board.plan.nics] == ["default"]
    await hp.vmm.stop()
    data = recorded(record)
    assert [r[1] for r in hotplug_requests(data)] == ["vm.add-net", "vm.remove-device"]
    assert hotplug_requests(data)[0] == ["PUT", "vm.add-net", 1]  # one tap fd passed
    assert new_id not in data["devices"]
    assert len(data["fds"]) >= 2  # boot tap + the hot-plugged tap fd


async def test_pending_until_the_pod_interface_is_listed(hp: Setup) -> None:
    hp.write(doc(sec="up"), network_status(sec=False))
    await hp.change()
    assert hp.manager.status["sec"].state is HotplugState.PENDING
    assert "ns/blue" in (hp.manager.status["sec"].reason or "")
    assert hp.runner.applied == []


class FailingAddNet:
    """The real adapter, except that add_net is refused the way the VMM would refuse it."""

    def __init__(self, inner: CloudHypervisor) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def add_net(self, dev: NetDevice, fds: Sequence[int] = ()) -> None:
        raise HypervisorError(f"vm.add-net answered HTTP 500 for {dev.id}")


async def test_failed_plug_rolls_the_plumbing_back_and_keeps_the_vm(
    hp: Setup, record: Path
) -> None:
    m = hp.manager
    m.hypervisor = FailingAddNet(hp.vmm)  # type: ignore[assignment]
    hp.write(doc(sec="up"), network_status(sec=True))
    await hp.change()
    st = m.status["sec"]
    assert st.state is HotplugState.FAILED and "HTTP 500" in (st.last_error or "")
    assert hp.runner.applied == ["sec"]
    assert hp.runner.removed == [("sec", ("default",))]
    assert "sec" not in hp.nics and [i.name for i in m.spec.interfaces] == ["default"]
    assert hp.vmm.pid is not None  # still running
    assert m.plan is hp.plan and hp.board.plan is None  # the run's plan is untouched
    await hp.vmm.stop()
    data = recorded(record)
    assert hotplug_requests(data) == []


async def test_invalid_spec_changes_nothing_and_is_logged(
    hp: Setup, record: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = hp.manager
    bad = doc(sec="up")
    bad["spec"]["domain"]["devices"]["interfaces"][1]["bridge"] = {"bogus": 1}
    caplog.set_level(logging.INFO)
    hp.write(bad, network_status(sec=True))
    await hp.change()
    assert m.last_error is not None and "bogus" in m.last_error
    assert "sec" not in m.status and hp.runner.applied == []
    assert any("refused, nothing changed" in r.getMessage() for r in caplog.records)
    hp.write("{not: [yaml")
    await hp.change()
    assert m.last_error is not None and "YAML" in m.last_error
    await hp.vmm.stop()
    data = recorded(record)
    assert hotplug_requests(data) == []


async def test_memory_change_needs_restart_and_is_not_applied(
    hp: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hp.write(doc(memory="2Gi"))
    await hp.change()
    assert any("memory" in r.getMessage() and "restart" in r.getMessage() for r in caplog.records)
    assert hp.runner.applied == [] and hp.manager.spec.memory_bytes == 1 << 30


async def test_run_loop_plugs_from_the_watcher(hp: Setup) -> None:
    task = asyncio.create_task(hp.manager.run(hp.watcher))
    try:
        hp.write(doc(sec="up"), network_status(sec=True))
        for _ in range(100):  # 5 s
            st = hp.manager.status.get("sec")
            if st is not None and st.state is HotplugState.PLUGGED:
                break
            await asyncio.sleep(0.05)
        assert hp.manager.status["sec"].state is HotplugState.PLUGGED
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_sriov_vf_plug_and_unplug(hp: Setup, record: Path, tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "host")
    host.add_pf()
    host.add_vf("0000:3b:02.2")
    hp.manager.options = replace(hp.options, host_root=host.paths.root)
    vf_status = (
        "k8s.v1.cni.cncf.io/network-status="
        + json.dumps(
            json.dumps(
                [
                    {"name": "cni", "interface": "eth0", "default": True},
                    {
                        "name": "ns/blue",
                        "interface": SEC_LINK,
                        "mac": "5e:2b:71:0b:25:10",
                        "device-info": {
                            "type": "pci",
                            "version": "1.1.0",
                            "pci": {"pci-address": "0000:3b:02.2"},
                        },
                    },
                ]
            )
        )
        + "\n"
    ).encode()
    m = hp.manager
    hp.write(doc(sec="up", binding="sriov"), vf_status)
    await hp.change()
    assert state(m, "sec") is HotplugState.PLUGGED, m.status["sec"]
    vf = m.passthrough["sec"].device
    assert isinstance(vf, GuestVfio) and vf.sysfs_path.endswith("/0000:3b:02.2")
    assert hp.runner.applied == []  # a VF has no pod plumbing
    # KubeVirt validation allows state: absent only for bridge; removing the interface works
    hp.write(doc(sec="absent", binding="sriov"))
    await hp.change()
    assert m.last_error is not None and "absent" in m.last_error
    assert state(m, "sec") is HotplugState.PLUGGED
    hp.write(doc())
    await hp.change()
    assert state(m, "sec") is HotplugState.UNPLUGGED, m.status["sec"]
    assert "sec" not in m.passthrough
    await hp.vmm.stop()
    data = recorded(record)
    assert [r[1] for r in hotplug_requests(data)] == ["vm.add-device", "vm.remove-device"]
    assert vf.id not in data["devices"]


async def test_runtime_input_that_blows_the_parser_keeps_the_vm(hp: Setup) -> None:
    """Bracket bombs and deep nesting: the strict loader refuses them like start-up does."""
    m = hp.manager
    for bad in ("[" * 600, "a: " + "[" * 5000 + "]" * 5000, "{" * 3000):
        hp.write(bad)
        await hp.change()
        assert m.last_error is not None, bad[:20]
        assert "sec" not in m.status and hp.vmm.pid is not None


async def test_a_network_status_nested_5000_deep_keeps_the_vm(hp: Setup) -> None:
    """The annotation is runtime input too: a JSON value nested 5000 deep (the issue's
    RecursionError) is refused with a reason, the VM and its NICs untouched."""
    m = hp.manager
    deep = json.dumps("[" * 5000 + "]" * 5000)
    hp.write(doc(sec="up"), f"k8s.v1.cni.cncf.io/network-status={deep}\n".encode())
    await hp.change()
    assert m.last_error is not None
    assert "sec" not in m.status or m.status["sec"].state is not HotplugState.PLUGGED
    assert hp.vmm.pid is not None and m.status["default"].state is HotplugState.BOOT
    await hp.vmm.stop()


async def test_link_down_is_refused_on_cloud_hypervisor_and_changes_nothing(
    hp: Setup, record: Path
) -> None:
    """cloud-hypervisor has no link-state API: a spec asking ``state: down`` of a running
    NIC is refused like any invalid spec (docs/network.md "Link state")."""
    m = hp.manager
    m.options = replace(hp.options, hypervisor="cloud-hypervisor")
    down = doc()
    down["spec"]["domain"]["devices"]["interfaces"][0]["state"] = "down"
    hp.write(down)
    await hp.change()
    assert m.last_error == (
        'spec.domain.devices.interfaces[0].state: "down" is not supported by '
        "cloud-hypervisor, which has no link-state API (the guest would keep its carrier; "
        "run QEMU)"
    )
    assert m.status["default"].state is HotplugState.BOOT and hp.board.links == {}
    with pytest.raises(HypervisorError, match="cloud-hypervisor has no link-state API"):
        await hp.vmm.set_link(hp.plan.nics[0].device.id, False)
    await hp.vmm.stop()
    assert hotplug_requests(recorded(record)) == []


async def test_managedtap_plug_serves_nothing_and_unplugs(hp: Setup, record: Path) -> None:
    """A managedtap NIC on a secondary network is plugged like a bridge NIC, but its
    owner runs no DHCP/RA server (the CNI's serve the guest)."""
    m = hp.manager
    spec = doc(sec="up")
    spec["spec"]["domain"]["devices"]["interfaces"][1] = {
        "name": "sec",
        "binding": {"name": "managedtap"},
    }
    hp.write(spec, network_status(sec=True))
    await hp.change()
    assert state(m, "sec") is HotplugState.PLUGGED, m.status["sec"]
    owner = hp.nics.get("sec")
    assert owner is not None and owner.servers == ()
    assert owner.plan.binding.value == "managedtap"
    spec["spec"]["domain"]["devices"]["interfaces"][1]["state"] = "absent"
    hp.write(spec)
    await hp.change()
    assert state(m, "sec") is HotplugState.UNPLUGGED, m.status["sec"]
    await hp.vmm.stop()
    assert [r[1] for r in hotplug_requests(recorded(record))] == ["vm.add-net", "vm.remove-device"]

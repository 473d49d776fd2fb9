"""The link refresh through the hot-plug manager: a pod address change re-plans the NIC
(through its owner) and takes its link down, holds it, and puts it back up — with QEMU's
link API (a recording stand-in: the real QMP path is tests/e2e/test_link_refresh.py) and
with the real CloudHypervisor adapter against the contract-enforcing fake VMM (no link
API: the NIC is re-planned, the link is not touched, and the event says so). Also the
watch loop on a fake notification socket: it sleeps until a relevant notification,
lets the burst settle, then follows once.

The pod netns is the faked boundary (:class:`RecordingRunner`: real plans, recorded
applies); the integration and e2e tiers use the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhcp.sockets import SocketRequest
from launcher import nics as nics_module
from launcher.errors import NetworkError
from launcher.hotplug.manager import Manager
from launcher.hotplug.refresh import RefreshAction, watch
from launcher.network import ApplyResult, NetworkPlan, NicPlan, PlanOptions, plan
from launcher.network.addrwatch import RTM_DELADDR, RTM_NEWADDR, AddressEvent, LinkAddresses
from launcher.network.discover import PodState
from launcher.nics import Nics, NicState
from launcher.options import RunOptions
from launcher.spec import parse
from launcher.status.model import StatusBoard
from tests.component.cloud_hypervisor.test_adapter import recorded
from tests.unit.network.helpers import pod_state

from .test_manager import Setup, doc, hotplug_requests, hp

__all__ = ["hp"]  # the fixture, imported for this module's tests

V4 = ipaddress.IPv4Interface
NEW = V4("10.244.1.7/24")
PAUSE_S = 0.3


class RecordingVmm:
    """QEMU's side of a link refresh: ``set_link`` calls with their times."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, bool]] = []

    async def set_link(self, device_id: str, up: bool) -> None:
        self.calls.append((time.monotonic(), device_id, up))


class Runner:
    """The pod netns boundary: the pod as the CNI made it; applies recorded (with time)."""

    def __init__(self) -> None:
        self.pod = pod_state()
        self.applied: list[tuple[float, NetworkPlan]] = []
        self.fail = False

    async def discover(self) -> PodState:
        return self.pod

    async def apply(self, plan: NetworkPlan) -> ApplyResult:
        if self.fail:
            raise NetworkError("pod network set-up failed: nft said no")
        self.applied.append((time.monotonic(), plan))
        return ApplyResult(changes=2)

    async def cleanup(self, plan: NetworkPlan) -> None:
        return None

    async def open_tap(self, name: str, queues: int) -> list[int]:
        raise AssertionError("no tap is opened by a refresh")

    async def open_socket(self, request: SocketRequest) -> socket.socket:
        raise AssertionError("no server runs in these tests")


async def setup(
    tmp_path: Path, state: str = "up"
) -> tuple[Manager, RecordingVmm, Runner, StatusBoard]:
    d = doc()
    d["spec"]["domain"]["devices"]["interfaces"][0]["state"] = state
    spec = parse(d)
    runner = Runner()
    boot = plan(spec, runner.pod, PlanOptions())
    nics = Nics(runner, state_dir=tmp_path)
    for nic in boot.nics:
        await nics.add(nic, serve=False, critical=True)
    runner.applied.clear()
    vmm, board = RecordingVmm(), StatusBoard()
    options = RunOptions(spec_path=tmp_path / "vm.yaml", podinfo=None, state_dir=tmp_path)
    manager = Manager(spec, boot, vmm, nics, options=options, board=board, refresh_pause_s=PAUSE_S)  # type: ignore[arg-type]
    manager.read_addresses = lambda name: LinkAddresses((NEW,))
    return manager, vmm, runner, board


async def test_refresh_takes_the_link_down_rewires_then_up_after_the_pause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager, vmm, runner, board = await setup(tmp_path)
    caplog.set_level(logging.INFO)
    decisions = await manager.follow_pod_addresses()
    assert decisions["default"].action is RefreshAction.REFRESH
    (down, _, was_up), (up, dev, now_up) = vmm.calls
    assert dev == "net0" and (was_up, now_up) == (False, True)
    ((applied_at, applied),) = runner.applied
    assert down <= applied_at <= up and up - down >= PAUSE_S
    (nic,) = applied.nics
    assert nic.dhcp4 is not None and nic.dhcp4.leases[0].address == NEW
    assert "10.244.1.7" in applied.nftables and "10.244.1.5 " not in applied.nftables
    owner = manager.nics.get("default")
    assert owner is not None and owner.plan == nic  # the one owner serves the new plan
    assert board.plan is not None and board.plan.nics[0].guest_ipv4 == NEW
    (event,) = [e for e in board.events() if e.kind == "link-refresh"]
    assert event.iface == "default" and "10.244.1.5/24" in event.message
    assert event.message.endswith("link refreshed")
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "link-refresh"]
    assert record.__dict__["old"] == ["10.244.1.5/24", "fd00:10:244:1::5/64"]
    assert record.__dict__["new"] == ["10.244.1.7/24", "fd00:10:244:1::5/64"]
    assert record.__dict__["refreshed"] is True
    # followed: the same address seen again is no change
    runner.applied.clear()
    again = await manager.follow_pod_addresses()
    assert again["default"].action is RefreshAction.MOVE and len(vmm.calls) == 2
    assert len(runner.applied) == 1  # moved off the pod interface again, nothing else


async def test_an_interface_whose_spec_keeps_it_down_is_replanned_not_brought_up(
    tmp_path: Path,
) -> None:
    manager, vmm, runner, board = await setup(tmp_path, state="down")
    await manager.follow_pod_addresses()
    assert vmm.calls == [] and len(runner.applied) == 1
    (event,) = [e for e in board.events() if e.kind == "link-refresh"]
    assert "link not refreshed: its link is down (spec state: down)" in event.message


class FakeServer:
    """A DHCPv4 server of one plan (the real ones need the bridge): what it serves and
    whether it is open."""

    def __init__(self, nic: NicPlan) -> None:
        assert nic.dhcp4 is not None
        self.lease = nic.dhcp4.leases[0].address
        self.state = "new"

    async def open(self) -> None:
        self.state = "open"

    async def serve(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.state = "closed"


async def test_a_failed_rewire_keeps_the_old_servers_and_lease_and_gives_the_link_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[FakeServer] = []

    def servers(nic: NicPlan, state_dir: Path, opener: object = None) -> Iterator[Any]:
        made.append(FakeServer(nic))
        yield "dhcp4", made[-1]

    monkeypatch.setattr(nics_module, "_make_servers", servers)
    manager, vmm, runner, board = await setup(tmp_path)
    manager.nics.bind(lambda coro, name: asyncio.get_running_loop().create_task(coro, name=name))
    await manager.nics.serve_all()
    owner = manager.nics.get("default")
    assert owner is not None and [s.lease for s in made] == [V4("10.244.1.5/24")]
    runner.fail = True
    caplog.set_level(logging.INFO)

    decisions = await manager.follow_pod_addresses()  # never raises: the VM keeps running
    assert decisions["default"].action is RefreshAction.REFRESH
    assert [up for _, _, up in vmm.calls] == [False, True]  # the link is back up
    # the old servers, still open, serve the old lease; no new ones were made
    assert [s for _, s in owner.servers] == made and made[0].state == "open"
    assert owner.state is NicState.SERVING and owner.plan.guest_ipv4 == V4("10.244.1.5/24")
    assert manager.plan.nics[0].guest_ipv4 == V4("10.244.1.5/24")
    assert manager.last_error is not None and "nft said no" in manager.last_error
    assert not [e for e in board.events() if e.kind == "link-refresh"]
    (event,) = [e for e in board.events() if e.kind == "link-refresh-failed"]
    assert event.iface == "default" and "keeps its lease of 10.244.1.5/24" in event.message
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "link-refresh-failed"]
    assert line.levelno == logging.ERROR and line.__dict__["interface"] == "default"
    assert line.__dict__["new"][0] == str(NEW)

    # the rollback put the new address back on the pod interface: that notification
    # does not flap the guest's link again for the same addresses
    runner.fail = False
    await manager.follow_pod_addresses()
    assert len(vmm.calls) == 2 and runner.applied == []
    # the pod's addresses change again: followed, and this time it works
    manager.read_addresses = lambda name: LinkAddresses((V4("10.244.1.9/24"),))
    await manager.follow_pod_addresses()
    assert [up for _, _, up in vmm.calls] == [False, True, False, True]
    assert made[0].state == "closed" and [s.lease for _, s in owner.servers] == [
        V4("10.244.1.9/24")
    ]
    await manager.nics.close()


async def test_cloud_hypervisor_has_no_link_api_the_nic_is_replanned_and_the_event_says_so(
    hp: Setup, record: Path
) -> None:
    """The real adapter against the fake VMM: set_link is refused without a request, so
    the guest keeps its carrier; the servers serve the new lease (the guest gets it when
    it renews: the DHCPv4 server NAKs the old address)."""
    m = hp.manager
    m.read_addresses = lambda name: LinkAddresses((NEW,))
    decisions = await m.follow_pod_addresses()
    assert decisions["default"].action is RefreshAction.REFRESH
    assert hp.runner.applied == ["default"]
    owner = hp.nics.get("default")
    assert owner is not None and owner.plan.guest_ipv4 == NEW
    (event,) = [e for e in hp.board.events() if e.kind == "link-refresh"]
    assert "link not refreshed: hypervisor set_link" in event.message
    assert "cloud-hypervisor has no link-state API" in event.message
    assert "the guest gets 10.244.1.7/24" in event.message
    await hp.vmm.stop()
    assert hotplug_requests(recorded(record)) == []  # no request outside the contract


# ---- the watch loop --------------------------------------------------------------------


class FakeMonitor:
    """An :class:`AddressMonitor` fed by the test: a socketpair end as its fd."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.queue: list[list[AddressEvent] | None] = []
        self.closed = False

    def push(self, events: list[AddressEvent] | None) -> None:
        self.queue.append(events)
        self.theirs.send(b"x")

    def fileno(self) -> int:
        return self.ours.fileno()

    def read(self) -> list[AddressEvent] | None:
        with contextlib.suppress(BlockingIOError):
            self.ours.recv(4096)
        out: list[AddressEvent] = []
        while self.queue:
            batch = self.queue.pop(0)
            if batch is None:
                return None
            out += batch
        return out

    def close(self) -> None:
        self.closed = True
        self.ours.close()
        self.theirs.close()


def added(index: int, kind: int = RTM_NEWADDR) -> AddressEvent:
    return AddressEvent(kind, index, NEW, 0, 0)


async def test_watch_follows_once_per_settled_burst_on_watched_links_only() -> None:
    monitor = FakeMonitor()
    follows: list[float] = []
    followed = asyncio.Event()

    async def follow() -> None:
        follows.append(time.monotonic())
        followed.set()

    task = asyncio.create_task(
        watch(lambda: frozenset({7}), follow, monitor=monitor, settle_s=0.05)  # type: ignore[arg-type]
    )
    try:
        monitor.push([added(8), added(7, RTM_DELADDR)])  # another link; a removal
        await asyncio.sleep(0.2)
        assert follows == []
        monitor.push([added(7)])
        monitor.push([added(7)])  # the IPv6 address right after: one follow
        async with asyncio.timeout(2):
            await followed.wait()
        followed.clear()
        await asyncio.sleep(0.2)
        assert len(follows) == 1
        monitor.push(None)  # the kernel dropped notifications: look again
        async with asyncio.timeout(2):
            await followed.wait()
        assert len(follows) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert monitor.closed

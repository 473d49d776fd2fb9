"""The status task serving a real StatusBoard: conditions, phases, lifecycle events.

The board is told each step the way ``launcher.run`` tells it (spec, phase, plan, network
applied, servers, hypervisor, phases); the task's server is queried over HTTP. Nothing
polls: a change shows as soon as the snapshot's 0.5 s cache lets it.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dhcp.v4.server import Dhcp4Server
from dhcp.v6.lease import Config6
from dhcp.v6.server import Dhcp6Server
from hypervisor.machine import VmState
from launcher.network import NetworkPlan
from launcher.phase import Phase
from launcher.spec import VmSpec
from launcher.status.model import StatusBoard

from .conftest import StandInHypervisor, check

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_task_serves_what_the_run_tells_the_board(
    spec: VmSpec,
    net_plan: NetworkPlan,
    dhcp4: Dhcp4Server,
    vmm: StandInHypervisor,
    tmp_path: Path,
) -> None:
    from launcher.status.task import status_task

    board = StatusBoard()
    board.set_spec(spec)
    servers: list[tuple[str, object]] = []
    board.set_servers(lambda: servers)
    port = free_port()
    task = asyncio.create_task(status_task(f"127.0.0.1:{port}")(board), name="status")
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:

            async def doc() -> dict[str, Any]:
                for _ in range(100):
                    try:
                        async with s.get(url + "/status") as resp:
                            body: dict[str, Any] = await resp.json()
                            check("Status", body)
                            return body
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
                raise AssertionError("the status task never served")

            async def settle() -> dict[str, Any]:
                await asyncio.sleep(0.6)  # the 0.5 s snapshot ttl: nothing else to wait for
                await doc()  # triggers the refresh; the next read sees it
                await asyncio.sleep(0.2)
                return await doc()

            first = await doc()
            assert (first["vm"], first["phase"], first["ready"]) == ("st/st-vm", "Pending", False)
            board.set_phase(Phase.NETWORK)
            board.set_plan(net_plan)
            board.network_applied("wired")
            board.set_phase(Phase.DHCP)
            bridge = net_plan.nics[0].bridge.name  # launcher.nics lists servers by bridge
            servers.append((bridge, dhcp4))
            d6 = Config6(interface=bridge, leases=(), server_duid=b"\0\3st")
            servers.append((bridge, Dhcp6Server(d6)))
            board.dhcp_serving("2 DHCP server(s) listening")
            board.set_hypervisor(vmm)  # type: ignore[arg-type]
            board.set_phase(Phase.HYPERVISOR)
            d = await settle()
            conds = {c["type"]: (c["status"], c["reason"]) for c in d["conditions"]}
            assert conds == {
                "NetworkApplied": ("True", "Applied"),
                "DhcpServing": ("True", "Listening"),
                "HypervisorRunning": ("False", "Created"),
            }
            assert d["phase"] == "Starting"
            assert {i["name"]: i["dhcp"]["serving"] for i in d["interfaces"]} == {"pod": True}
            vmm.emit("resume", VmState.RUNNING)  # the status task follows the VMM's events
            board.set_phase(Phase.RUNNING)
            d = await settle()
            assert (d["phase"], d["ready"]) == ("Running", True)
            assert d["launcher"]["timeToReadySeconds"] is not None
            kinds = [(e["source"], e["kind"]) for e in d["events"]]
            assert ("hypervisor", "resume") in kinds
            assert ("launcher", "phase") in kinds
            assert ("launcher", "HypervisorRunning=True") in kinds
            board.set_phase(Phase.STOPPING, "SIGTERM")
            d = await settle()
            assert d["phase"] == "Stopping"
            vmm.emit("shutdown", VmState.SHUTDOWN)
            d = await settle()
            assert (d["phase"], d["ready"]) == ("Succeeded", False)
            assert ("hypervisor", "shutdown") in [(e["source"], e["kind"]) for e in d["events"]]
            # told, never polled: the task created no timer task of its own
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert not any("poll" in n for n in names), names
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The hook closed its server when cancelled.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

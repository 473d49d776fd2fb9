"""status_hook plugged into a real launcher.run.RunContext: conditions, phases, lifecycle events.

The RunContext is filled step by step the way ``launcher.run`` fills it (spec, plan after
apply, DHCP servers, hypervisor, phases); the hook's server is queried over HTTP.
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
from launcher.run import RunContext, RunOptions
from launcher.spec import VmSpec

from .conftest import StandInHypervisor, check

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_hook_follows_the_run_context(
    spec: VmSpec,
    net_plan: NetworkPlan,
    dhcp4: Dhcp4Server,
    vmm: StandInHypervisor,
    tmp_path: Path,
) -> None:
    from launcher.status.runsource import POLL_S, status_hook

    ctx = RunContext(RunOptions(spec_path=tmp_path / "vm.yaml"))
    ctx.spec = spec
    port = free_port()
    task = asyncio.create_task(status_hook(f"127.0.0.1:{port}")(ctx), name="status")
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
                raise AssertionError("the status hook never served")

            async def settle() -> dict[str, Any]:
                await asyncio.sleep(POLL_S * 3 + 0.6)  # a poll plus the 0.5 s snapshot ttl
                await doc()  # triggers the refresh; the next read sees it
                await asyncio.sleep(0.2)
                return await doc()

            first = await doc()
            assert (first["vm"], first["phase"], first["ready"]) == ("st/st-vm", "Pending", False)
            ctx.set_phase("network")
            ctx.plan = net_plan  # run.py sets the plan once apply() succeeded
            ctx.set_phase("dhcp")
            ctx.dhcp4.append(dhcp4)
            await asyncio.sleep(POLL_S * 3)
            assert "DhcpServing" not in {  # the plan also has DHCPv6: not serving yet
                c["type"] for c in (await settle())["conditions"] if c["status"] == "True"
            }
            d6 = net_plan.nics[0].dhcp6
            assert d6 is not None
            ctx.dhcp6.append(
                Dhcp6Server(Config6(interface=d6.interface, leases=(), server_duid=b"\0\3st"))
            )
            ctx.hypervisor = vmm  # type: ignore[assignment]
            ctx.set_phase("hypervisor")
            d = await settle()
            conds = {c["type"]: (c["status"], c["reason"]) for c in d["conditions"]}
            assert conds == {
                "NetworkApplied": ("True", "Applied"),
                "DhcpServing": ("True", "Listening"),
                "HypervisorRunning": ("False", "Created"),
            }
            assert d["phase"] == "Starting"
            vmm.emit("resume", VmState.RUNNING)
            ctx.set_phase("running")
            d = await settle()
            assert (d["phase"], d["ready"]) == ("Running", True)
            assert d["launcher"]["timeToReadySeconds"] is not None
            kinds = [(e["source"], e["kind"]) for e in d["events"]]
            assert ("hypervisor", "resume") in kinds
            assert ("launcher", "phase") in kinds
            assert ("launcher", "HypervisorRunning=True") in kinds
            ctx.set_phase("stopping")
            d = await settle()
            assert d["phase"] == "Stopping"
            vmm.emit("shutdown", VmState.SHUTDOWN)
            d = await settle()
            assert (d["phase"], d["ready"]) == ("Succeeded", False)
            assert ("hypervisor", "shutdown") in [(e["source"], e["kind"]) for e in d["events"]]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The hook closed its server when cancelled.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

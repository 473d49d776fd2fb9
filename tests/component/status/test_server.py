"""The status server against a StatusBoard with a real DHCPv4 server and a real VMM process.

Every endpoint is requested over real HTTP on loopback (and a unix socket); JSON bodies
are validated against the committed launcher/status/openapi.yaml.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from dhcp.v4 import options as o
from dhcp.v4.server import Dhcp4Server
from hypervisor.machine import VmState
from launcher.errors import StatusServerError
from launcher.network import NetworkPlan
from launcher.spec import VmSpec
from launcher.status import StatusBoard, StatusServer
from launcher.status.client import fetch_status, format_status
from launcher.status.server import LAG_LIMIT_S, LAG_WINDOW_S

from .conftest import SECRET, StandInHypervisor, check, counts, exchange

pytestmark = pytest.mark.timeout(60)


def board_for(spec: VmSpec, net_plan: NetworkPlan) -> StatusBoard:
    board = StatusBoard()
    board.set_spec(spec)
    board.set_plan(net_plan)
    return board


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_readyz_follows_the_run_and_status_matches_openapi(
    spec: VmSpec, net_plan: NetworkPlan, dhcp4: Dhcp4Server, vmm: StandInHypervisor
) -> None:
    board = board_for(spec, net_plan)
    async with StatusServer(board, "127.0.0.1:0", ttl=0) as server, aiohttp.ClientSession() as s:
        url = server.url

        async def ready() -> tuple[int, dict[str, object]]:
            async with s.get(url + "/readyz") as resp:
                body = await resp.json()
                check("Ready", body)
                return resp.status, body

        status, body = await ready()
        assert status == 503 and str(body["reason"]).startswith("NetworkApplied: NotApplied")
        assert body["phase"] == "Pending"
        board.network_applied("wired")
        status, body = await ready()
        assert status == 503 and str(body["reason"]).startswith("DhcpServing: NotStarted")
        assert body["phase"] == "Starting"
        board.add_dhcp(dhcp4, interface=net_plan.nics[0].bridge.name)
        board.dhcp_serving()
        board.set_hypervisor(vmm)  # type: ignore[arg-type]
        status, body = await ready()
        assert status == 503 and str(body["reason"]).startswith("HypervisorRunning: Created")
        vmm.emit("resume", VmState.RUNNING)
        status, body = await ready()
        assert (status, body["ready"], body["phase"]) == (200, True, "Running")

        async with s.get(url + "/status") as resp:
            doc = await resp.json()
        check("Status", doc)
        assert doc["vm"] == "st/st-vm"
        hv = doc["hypervisor"]
        assert (hv["kind"], hv["pid"], hv["state"]) == ("qemu", vmm.proc.pid, "Running")
        assert hv["rssBytes"] > 0 and hv["uptimeSeconds"] >= 0
        assert doc["launcher"]["rssBytes"] > 10 << 20
        assert doc["launcher"]["timeToReadySeconds"] is not None
        assert [c["status"] for c in doc["conditions"]] == ["True", "True", "True"]
        iface = doc["interfaces"][0]
        nic = net_plan.nics[0]
        assert (iface["name"], iface["binding"], iface["mac"]) == ("pod", "bridge", nic.device.mac)
        assert (iface["podInterface"], iface["tap"], iface["queueCount"]) == (
            nic.pod_interface,
            nic.tap.name,
            1,
        )
        assert doc["nftables"]["digest"] is None or doc["nftables"]["digest"].startswith("sha256:")

        # The VMM fails: not ready, phase Failed, the reason names the state.
        vmm.emit("panic", VmState.FAILED)
        status, body = await ready()
        assert (status, body["phase"]) == (503, "Failed")
        assert "HypervisorRunning: Failed" in str(body["reason"])


async def test_dhcp_counters_leases_events_and_metrics(
    spec: VmSpec, net_plan: NetworkPlan, dhcp4: Dhcp4Server, vmm: StandInHypervisor
) -> None:
    board = board_for(spec, net_plan)
    board.add_dhcp(dhcp4, interface=net_plan.nics[0].bridge.name)
    board.set_hypervisor(vmm)  # type: ignore[arg-type]
    mac = net_plan.nics[0].device.mac
    before = time.time()
    await exchange(dhcp4, mac, o.DISCOVER, o.REQUEST, o.DISCOVER, o.REQUEST)
    await exchange(dhcp4, "02:00:00:00:57:99", o.DISCOVER)  # unknown client: no offer
    async with StatusServer(board, "127.0.0.1:0", ttl=0) as server, aiohttp.ClientSession() as s:
        async with s.get(server.url + "/status") as resp:
            doc = await resp.json()
        check("Status", doc)
        iface = doc["interfaces"][0]
        d = iface["dhcp"]
        assert (d["offers"], d["acks"], d["naks"], d["declines"], d["releases"]) == (2, 2, 0, 0, 0)
        assert d["received"] == 5 and d["serving"] is True
        address = str(dhcp4.config.leases[0].address.ip)
        assert iface["ipAddress"] == address and iface["ipAddresses"] == [address]
        assert "dhcp-lease" in iface["infoSource"]
        (lease,) = iface["leases"]
        assert (lease["family"], lease["address"], lease["mac"]) == ("ipv4", address, mac)
        got = time.mktime(time.strptime(lease["handedOutAt"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert abs(got - time.timezone - before) < 5
        seen = counts(doc["events"])
        assert seen["dhcp4:offer"] == 2 and seen["dhcp4:ack"] == 2
        assert seen["launcher:spec-loaded"] == 1
        status, ctype, text = await get(s, server.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        lines = set(text.splitlines())
        assert (
            'virt_launcher_dhcp_messages_total{family="ipv4",interface="pod",type="ack"} 2.0'
            in lines
        )
        assert (
            'virt_launcher_dhcp_messages_total{family="ipv4",interface="pod",type="offer"} 2.0'
            in lines
        )
        assert "virt_launcher_hypervisor_up 0.0" in lines
        assert 'virt_launcher_hypervisor_state{kind="qemu",state="Created"} 1.0' in lines
        assert not any("vmm" in ln for ln in lines)  # no VMM figures before it runs
        vmm.emit("resume", VmState.RUNNING)
        lines = set((await get(s, server.url + "/metrics"))[2].splitlines())
        assert "virt_launcher_hypervisor_up 1.0" in lines
        assert 'virt_launcher_hypervisor_state{kind="qemu",state="Running"} 1.0' in lines
        vmm_rss = [
            ln
            for ln in lines
            if ln.startswith('virt_launcher_resident_memory_bytes{process="vmm"}')
        ]
        assert len(vmm_rss) == 1 and float(vmm_rss[0].split()[-1]) > 100_000
        # A release removes the lease from the interface.
        await exchange(dhcp4, mac, o.RELEASE)
        async with s.get(server.url + "/status") as resp:
            doc = await resp.json()
        assert doc["interfaces"][0]["leases"] == []
        assert doc["interfaces"][0]["dhcp"]["releases"] == 1


async def test_only_get_and_head_unknown_paths_404_and_no_secret_anywhere(
    spec: VmSpec, net_plan: NetworkPlan, dhcp4: Dhcp4Server, vmm: StandInHypervisor
) -> None:
    assert spec.volumes, "the spec must carry the cloud-init user data under test"
    board = board_for(spec, net_plan)
    board.add_dhcp(dhcp4, interface=net_plan.nics[0].bridge.name)
    board.set_hypervisor(vmm)  # type: ignore[arg-type]
    async with StatusServer(board, "127.0.0.1:0", ttl=0) as server, aiohttp.ClientSession() as s:
        bodies = []
        for path in ("/", "/healthz", "/readyz", "/status", "/metrics", "/openapi.yaml"):
            async with s.get(server.url + path) as resp:
                assert resp.status in (200, 503), path
                bodies.append(await resp.text())
            async with s.head(server.url + path) as resp:
                assert resp.status in (200, 503), path
                assert await resp.read() == b""
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                async with s.request(method, server.url + path) as resp:
                    assert resp.status == 405, (method, path)
                    assert set(resp.headers["Allow"].split(",")) >= {"GET"}
        for path in ("/nope", "/status/x", "/../etc/passwd", "/spec"):
            async with s.get(server.url + path) as resp:
                assert resp.status == 404, path
        joined = "\n".join(bodies)
        assert "st-vm" in joined  # the bodies are real
        assert SECRET not in joined
        assert "cloud-config" not in joined and "userData" not in joined


async def test_unix_socket_and_the_terminal_client(
    spec: VmSpec, net_plan: NetworkPlan, dhcp4: Dhcp4Server, vmm: StandInHypervisor, tmp_path: Path
) -> None:
    board = board_for(spec, net_plan)
    board.network_applied()
    board.add_dhcp(dhcp4, interface=net_plan.nics[0].bridge.name)
    board.dhcp_serving()
    board.set_hypervisor(vmm)  # type: ignore[arg-type]
    vmm.emit("resume", VmState.RUNNING)
    await exchange(dhcp4, net_plan.nics[0].device.mac, o.DISCOVER, o.REQUEST)
    sock = tmp_path / "status.sock"
    async with StatusServer(board, f"unix:{sock}", ttl=0):
        assert sock.is_socket()
        doc = await fetch_status(str(sock))
    check("Status", doc)
    text = format_status(doc)
    address = str(dhcp4.config.leases[0].address.ip)
    assert text.splitlines()[0] == "VM st/st-vm: Running, ready"
    row = next(ln for ln in text.splitlines() if ln.startswith("pod "))
    assert "bridge" in row and address in row and "1/1/0/0/0" in row
    assert "HypervisorRunning  True" in text
    assert "dhcp4      ack" in text
    with pytest.raises(StatusServerError, match=r"status\.sock"):
        await fetch_status(str(sock))  # the server is gone


async def test_second_server_on_same_port_is_a_status_server_error(
    spec: VmSpec, net_plan: NetworkPlan
) -> None:
    board = board_for(spec, net_plan)
    async with StatusServer(board, "127.0.0.1:0") as first:
        second = StatusServer(board, f"127.0.0.1:{first.port}")
        with pytest.raises(StatusServerError, match=f"127.0.0.1:{first.port}") as err:
            await second.start()
        assert err.value.exit_code == 6


async def test_healthz_reports_a_blocked_event_loop(spec: VmSpec, net_plan: NetworkPlan) -> None:
    board = board_for(spec, net_plan)
    async with StatusServer(board, "127.0.0.1:0") as server, aiohttp.ClientSession() as s:
        async with s.get(server.url + "/healthz") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "ok"
            check("Health", body)
        # lag is measured when asked: block the loop while a probe waits on its timer
        probe = asyncio.create_task(server.probe_lag())
        await asyncio.sleep(0)  # the probe is sleeping now
        blocked = time.monotonic()
        time.sleep(LAG_LIMIT_S + 0.3)  # noqa: ASYNC251 - block the loop on purpose
        assert await probe > LAG_LIMIT_S
        async with s.get(server.url + "/healthz") as resp:  # the stall is kept for the window
            body = await resp.json()
            assert resp.status == 503 and body["status"] == "lagging", body
            assert body["loopLagSeconds"] > LAG_LIMIT_S
            check("Health", body)
        for _ in range(40):  # the stall ages out of the 5 s window
            await asyncio.sleep(0.25)
            async with s.get(server.url + "/healthz") as resp:
                if resp.status == 200:
                    break
        else:
            raise AssertionError("/healthz stayed 503 after the loop recovered")
        assert time.monotonic() - blocked >= LAG_WINDOW_S - 0.5


async def test_events_are_capped_at_100_newest_last(
    spec: VmSpec, net_plan: NetworkPlan, dhcp4: Dhcp4Server
) -> None:
    board = board_for(spec, net_plan)
    board.add_dhcp(dhcp4, interface=net_plan.nics[0].bridge.name)
    for i in range(150):
        board.event("test", f"n{i}")
    await exchange(dhcp4, net_plan.nics[0].device.mac, o.DISCOVER)
    async with (
        StatusServer(board, "127.0.0.1:0", ttl=0) as server,
        aiohttp.ClientSession() as s,
        s.get(server.url + "/status") as resp,
    ):
        events = (await resp.json())["events"]
    assert len(events) == 100
    assert events[-1]["source"] == "dhcp4" and events[-1]["kind"] == "offer"
    assert events[-2]["message"] == "n149"
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)

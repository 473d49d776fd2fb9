"""The netlink child (launcher.netchild, through launcher.agent) against a real pod netns:
same results as in-process, errors cross the process boundary with their type and
message, a dead or stuck child is a NetworkError, and the children are gone afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.agent import Agent
from launcher.errors import NetworkError, StateCacheError
from launcher.netchild import call_once
from launcher.network import PlanOptions, discover, plan
from launcher.network.state import PHASE_CONFIGURING, InterfaceRecord, write_record
from testbed.netns import Topology, nsrun
from testbed.runner import build_spec


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("make", ["fork", "spawn"])
async def test_discover_and_apply_in_the_child_match_in_process(
    topo: Topology, tmp_path: Path, make: str
) -> None:
    topo.create()
    # in-process pyroute2 runs its own event loop: keep it off this test's loop
    here = await asyncio.to_thread(discover, topo.pod, tmp_path / "here", hostname="pod-host")
    agent = Agent.fork() if make == "fork" else Agent.spawn()
    try:
        there = await agent.call("discover", topo.pod, tmp_path / "child", hostname="pod-host")
        assert there == here
        planned = plan(build_spec("bridge", 1, ""), there, PlanOptions(stand_in_netns=topo.guest))
        result = await agent.call("apply", planned, tmp_path / "child", netns=topo.pod)
        assert result.changes > 0
        links = nsrun(topo.pod, "ip", "-br", "link").stdout
        assert "vlbr0" in links and "vltap0" in links
        again = await agent.call("apply", planned, tmp_path / "child", netns=topo.pod)
        assert again.changes == 0
    finally:
        await agent.close()
    assert _gone(agent.pid)
    await asyncio.to_thread(call_once, "cleanup", planned, tmp_path / "child", netns=topo.pod)
    assert "vlbr0" not in nsrun(topo.pod, "ip", "-br", "link").stdout


async def test_the_childs_error_is_raised_with_its_type_and_message(
    topo: Topology, tmp_path: Path
) -> None:
    topo.create()
    pod = await asyncio.to_thread(discover, topo.pod, tmp_path, hostname="pod-host")
    planned = plan(build_spec("bridge", 1, ""), pod, PlanOptions(stand_in_netns=topo.guest))
    write_record(
        tmp_path,
        InterfaceRecord(
            pod_interface="eth0", binding="bridge", phase=PHASE_CONFIGURING, original={}
        ),
    )
    agent = Agent.spawn()
    try:
        with pytest.raises(StateCacheError, match="phase 'configuring'"):
            await agent.call("apply", planned, tmp_path, netns=topo.pod)
        # the child survives a failed request and answers the next one
        with pytest.raises(NetworkError, match="'nw-nope' does not exist"):
            await agent.call("discover", "nw-nope", None)
        pod_again = await agent.call("discover", topo.pod, None, hostname="pod-host")
        assert pod_again.link("eth0").mac == pod.link("eth0").mac
    finally:
        await agent.close()
    with pytest.raises(NetworkError, match="'nw-nope' does not exist"):
        await asyncio.to_thread(call_once, "discover", "nw-nope", None)
    # pyroute2 alone would have created it
    assert "nw-nope" not in await asyncio.to_thread(os.listdir, "/run/netns")


@pytest.mark.parametrize("make", ["fork", "spawn"])
async def test_a_child_that_dies_is_a_network_error_naming_the_request(make: str) -> None:
    agent = Agent.fork() if make == "fork" else Agent.spawn()
    os.kill(agent.pid, signal.SIGKILL)
    with pytest.raises(NetworkError, match=r"exited \(status -9\) before answering 'discover'"):
        await agent.call("discover", None, None)
    await agent.close()


@pytest.mark.parametrize("make", ["fork", "spawn"])
async def test_a_stuck_child_is_killed_when_its_call_times_out(make: str) -> None:
    agent = Agent.fork() if make == "fork" else Agent.spawn()
    await agent.call("discover", None, None)  # ready
    os.kill(agent.pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(NetworkError, match="did not finish 'discover' in 1 s"):
        await agent.call("discover", None, None, timeout=1.0)
    assert time.monotonic() - started < 5
    assert _gone(agent.pid)
    await agent.close()


def test_unknown_operation_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="unknown netlink child operation 'rm'"):
        call_once("rm", "-rf")


def test_the_child_imports_pyroute2_without_its_package_init() -> None:
    code = (
        "import sys\n"
        "from launcher.network.netlink import lean_import, Netlink\n"
        "lean_import()\n"
        "names = [l.name for l in Netlink().links()]\n"
        "assert 'lo' in names, names\n"
        "heavy = [m for m in ('pyroute2.ndb.main', 'pyroute2.ipdb', 'pyroute2.conntrack')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


async def test_prefetched_request_is_answered_once(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    agent = Agent.spawn()
    try:
        agent.prefetch("discover", topo.pod, tmp_path)
        first = await agent.call("discover", topo.pod, tmp_path)  # reads the prefetched answer
        second = await asyncio.wait_for(agent.call("discover", topo.pod, tmp_path), 30)
        assert first == second
        assert {lk.name for lk in first.links} >= {"eth0"}
    finally:
        await agent.close()

"""Transactional set-up in real namespaces: a failure or a kill -9 before ANY apply step
leaves the pod exactly as discovery saw it (addresses in order, routes, MACs, link
states, names, no launcher links, tables or records), and the next start completes.

The pod is the hard case from the field: eth0 with 10.77.0.5/24, a secondary
10.77.0.6/24 in the same subnet (deleting the primary would take it along), 10.88.0.5/24
in another subnet, fd77::5/64, default routes for both families. Faults come from
``testbed.faults`` (test-only wrapping of apply's pod-changing functions): ``fail`` in
this process, ``kill`` in a forked child (the restart is this process: it has only the
state dir and the kernel, like a restarted launcher). DAD is off on the pod interface so
its kernel link-local is usable at once after a restore and the dumps settle at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.agent import Agent, AgentRunner
from launcher.errors import NetworkError
from launcher.netchild import call_once
from launcher.network import PlanOptions, apply, cleanup, discover, plan, recover
from launcher.network.plan import NetworkPlan
from launcher.network.state import TXN_FILE
from launcher.nics import LocalRunner, Nics
from testbed.faults import Faults, armed
from testbed.netns import Topology, nsrun, ping, sh, wait_for
from testbed.runner import build_spec

REPO = Path(__file__).resolve().parents[3]


def multi_address_pod(topo: Topology) -> Topology:
    topo.create()
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
    sh("ip", "-n", topo.pod, "addr", "add", "10.77.0.6/24", "dev", "eth0")
    sh("ip", "-n", topo.pod, "addr", "add", "10.88.0.5/24", "brd", "+", "dev", "eth0")
    sh("ip", "-n", topo.peer, "addr", "add", "10.88.0.1/24", "dev", "peer0")
    return topo


def dump(topo: Topology) -> str:
    """The pod netns as text, without interface indexes (recreated links get new ones)
    and the tap's MAC (the kernel picks one at random for each new tap)."""
    text = re.sub(r"(?m)^\d+: ", "", topo.dump())
    text = re.sub(r"(?m)^(vltap\d+: .*?link/ether )\S+", r"\1<random>", text)
    return kernel_ll_routes_sorted(re.sub(r"@if\d+", "@if", text))


def kernel_ll_routes_sorted(text: str) -> str:
    """The kernel's own fe80::/64 prefix routes, sorted: it lists them in the order their
    links came up, which depends on timing (carrier), not on what the launcher did."""
    lines = text.splitlines()
    ll = [line for line in lines if line.startswith("fe80::/64 dev ") and "proto kernel" in line]
    rest = [line for line in lines if line not in ll]
    return "\n".join([*rest, *sorted(ll)])


def pristine_dump(topo: Topology, timeout: float = 10.0) -> str:
    """The pod as the CNI made it, once its link-locals finished DAD (bounded)."""
    deadline = time.monotonic() + timeout
    now = dump(topo)
    while "tentative" in now and time.monotonic() < deadline:
        time.sleep(0.1)
        now = dump(topo)
    return now


def configured_dump(topo: Topology, timeout: float = 10.0) -> str:
    """The configured pod once the pod port has its carrier back and nothing moves."""
    deadline = time.monotonic() + timeout
    last = dump(topo)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = dump(topo)
        if now == last and "eth0@if: <NO-CARRIER" not in now and "tentative" not in now:
            return now
        last = now
    return last


def settle(topo: Topology, want: str, timeout: float = 10.0) -> str:
    """The dump once it equals ``want`` (bounded: the last dump when it never does)."""
    deadline = time.monotonic() + timeout
    now = dump(topo)
    while now != want and time.monotonic() < deadline:
        time.sleep(0.1)
        now = dump(topo)
    return now


def leftovers(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir()) if state.exists() else []


def make_plan(topo: Topology, state: Path, binding: str) -> NetworkPlan:
    pod = discover(topo.pod, state, hostname="pod-host")
    return plan(build_spec(binding, 1, "80"), pod, PlanOptions())


@pytest.fixture
def pod(topo: Topology) -> Iterator[Topology]:
    yield multi_address_pod(topo)


def _reference(topo: Topology, state: Path, binding: str) -> tuple[str, str, int]:
    """(pristine dump, configured dump, number of apply steps); the pod left pristine."""
    pristine = pristine_dump(topo)
    p = make_plan(topo, state, binding)
    with armed(Faults()) as counted:
        apply(p, state, netns=topo.pod)
    configured = configured_dump(topo)
    assert configured != pristine
    cleanup(p, state, netns=topo.pod)
    assert settle(topo, pristine) == pristine, "cleanup did not restore the pod exactly"
    assert leftovers(state) == []
    return pristine, configured, len(counted.steps)


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_a_failure_before_any_step_restores_the_pod_exactly(
    pod: Topology, tmp_path: Path, binding: str
) -> None:
    state = tmp_path / "state"
    pristine, _, steps = _reference(pod, state, binding)
    assert steps > 10
    for k in range(1, steps + 1):
        p = make_plan(pod, state, binding)
        with armed(Faults(fail_at=k)), pytest.raises(NetworkError, match="injected failure"):
            apply(p, state, netns=pod.pod)
        assert settle(pod, pristine) == pristine, f"not restored after a failure at step {k}"
        assert leftovers(state) == [], k


def test_a_rollback_that_fails_too_keeps_the_record_and_the_next_start_retries(
    pod: Topology, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    pristine, _, steps = _reference(pod, state, "bridge")
    p = make_plan(pod, state, "bridge")
    with armed(Faults(fail_from=steps // 2)), pytest.raises(NetworkError) as info:
        apply(p, state, netns=pod.pod)
    message = str(info.value)
    assert "injected lasting failure" in message and "rolling the pod back failed too" in message
    assert f"{state / TXN_FILE} is kept and the next start retries" in message
    assert (state / TXN_FILE).exists() and dump(pod) != pristine
    assert recover(state, netns=pod.pod) is True  # what the next start does first
    assert settle(pod, pristine) == pristine
    assert leftovers(state) == []


def test_a_plan_older_than_the_pod_changes_nothing(pod: Topology, tmp_path: Path) -> None:
    """Preflight: the plan moves an address the pod no longer has → exit 3, untouched."""
    state = tmp_path / "state"
    p = make_plan(pod, state, "bridge")
    sh("ip", "-n", pod.pod, "addr", "del", "10.88.0.5/24", "dev", "eth0")
    before = pristine_dump(pod)  # once the link-locals left DAD
    with pytest.raises(NetworkError, match=r"no longer has 10\.88\.0\.5/24"):
        apply(p, state, netns=pod.pod)
    assert dump(pod) == before and leftovers(state) == []


def _killed_apply(topo: Topology, state: Path, binding: str, kill_at: int) -> int:
    """Apply in a forked child that SIGKILLs itself before step ``kill_at``; its status."""
    p = make_plan(topo, state, binding)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 70
        try:
            with armed(Faults(kill_at=kill_at)):
                apply(p, state, netns=topo.pod)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_kill9_before_any_step_then_a_restart_recovers(
    pod: Topology, tmp_path: Path, binding: str
) -> None:
    state = tmp_path / "state"
    pristine, configured, steps = _reference(pod, state, binding)
    for k in range(1, steps + 1):
        status = _killed_apply(pod, state, binding, k)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, status)
        # what a restarted launcher finds: the pod rolled back from the record (and any
        # temp file a write killed half-way left, removed)
        recover(state, netns=pod.pod)
        assert settle(pod, pristine) == pristine, f"not rolled back after kill -9 at step {k}"
        assert leftovers(state) == [], k
        # … and the restart's own apply completes the set-up
        p = make_plan(pod, state, binding)
        apply(p, state, netns=pod.pod)
        assert settle(pod, configured) == configured, k
        cleanup(p, state, netns=pod.pod)
        assert settle(pod, pristine) == pristine, k


def test_a_restart_after_a_kill_applies_without_calling_recover(
    pod: Topology, tmp_path: Path
) -> None:
    """apply recovers by itself; discover (read only) already plans from the record."""
    state = tmp_path / "state"
    _, configured, steps = _reference(pod, state, "bridge")
    status = _killed_apply(pod, state, "bridge", steps // 2)
    assert os.WIFSIGNALED(status)
    assert (state / TXN_FILE).exists()
    before = dump(pod)
    p = make_plan(pod, state, "bridge")  # from the record: eth0 has lost its addresses
    assert dump(pod) == before, "discover changed the pod"
    assert p.nics[0].dhcp4 is not None
    assert str(p.nics[0].dhcp4.leases[0].address) == "10.77.0.5/24"
    apply(p, state, netns=pod.pod)
    assert settle(pod, configured) == configured


def test_bridge_keeps_the_other_addresses_on_the_pod_side(pod: Topology, tmp_path: Path) -> None:
    state = tmp_path / "state"
    pristine = pristine_dump(pod)
    p = make_plan(pod, state, "bridge")
    nic = p.nics[0]
    assert nic.dhcp4 is not None and [str(x.address) for x in nic.dhcp4.leases] == ["10.77.0.5/24"]
    assert nic.dhcp6 is not None and [str(x.address) for x in nic.dhcp6.leases] == ["fd77::5/64"]
    apply(p, state, netns=pod.pod)
    eth0 = nsrun(pod.pod, "ip", "-o", "addr", "show", "eth0").stdout
    assert "inet " not in eth0 and "fd77::" not in eth0
    bridge = nsrun(pod.pod, "ip", "-o", "addr", "show", "vlbr0").stdout
    assert "10.77.0.6/24" in bridge and "10.88.0.5/24" in bridge and "10.77.0.5" not in bridge
    # the pod's own traffic still flows from the addresses it kept
    assert wait_for(lambda: ping(pod.pod, "10.77.0.1", source="10.77.0.6"), timeout=10)
    assert wait_for(lambda: ping(pod.peer, "10.88.0.5"), timeout=10)
    cleanup(p, state, netns=pod.pod)
    assert settle(pod, pristine) == pristine


def test_masquerade_keeps_every_address(pod: Topology, tmp_path: Path) -> None:
    state = tmp_path / "state"
    p = make_plan(pod, state, "masquerade")
    apply(p, state, netns=pod.pod)
    eth0 = nsrun(pod.pod, "ip", "-o", "addr", "show", "eth0").stdout
    for addr in ("10.77.0.5/24", "10.77.0.6/24", "10.88.0.5/24", "fd77::5/64"):
        assert addr in eth0
    assert "{ 10.77.0.5, 10.88.0.5, 10.77.0.6 }" in p.nftables


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_a_pod_interface_that_was_down_is_left_down(
    topo: Topology, tmp_path: Path, binding: str
) -> None:
    topo.create()
    sh("ip", "-n", topo.pod, "link", "set", "eth0", "down")
    pristine = pristine_dump(topo)
    state = tmp_path / "state"
    p = make_plan(topo, state, binding)
    apply(p, state, netns=topo.pod)
    cleanup(p, state, netns=topo.pod)
    assert settle(topo, pristine) == pristine
    assert "state DOWN" in nsrun(topo.pod, "ip", "-o", "link", "show", "eth0").stdout


# ---- faults of the environment, through the runner (a process, like the launcher) ----


def runner(
    topo: Topology, state: Path, *extra: str, prefix: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m testbed.runner`` in the pod netns, then ``ls -la`` of the state dir;
    ``prefix``: shell run first in a private mount namespace (to hide /dev/net/tun or
    nft, or mount a small state dir)."""
    argv = [sys.executable, "-m", "testbed.runner", "--state-dir", str(state), *extra]
    script = (
        f"set -e\n{prefix}\nset +e\n{shlex.join(argv)}\necho EXIT=$?\n"
        f"ls -la {state} 2>/dev/null || true"
    )
    private = ["unshare", "-m", "--propagation", "private"]
    return subprocess.run(
        ["ip", "netns", "exec", topo.pod, *private, "sh", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def result(done: subprocess.CompletedProcess[str]) -> tuple[int, dict[str, object]]:
    code = int(re.findall(r"EXIT=(\d+)", done.stdout)[-1])
    return code, json.loads(done.stdout.splitlines()[0])


def test_missing_dev_net_tun_is_exit_3_and_nothing_changes(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    pristine = pristine_dump(topo)
    state = tmp_path / "state"
    done = runner(topo, state, "--binding", "bridge", prefix="mount -t tmpfs tmpfs /dev/net")
    code, out = result(done)
    assert code == 3, done.stdout + done.stderr
    assert "/dev/net/tun is missing" in str(out["message"])
    assert dump(topo) == pristine and leftovers(state) == []
    wrong = "mount --bind /dev/null /dev/net/tun"
    code, out = result(runner(topo, state, "--binding", "bridge", prefix=wrong))
    assert code == 3 and "is not the tun device" in str(out["message"])
    assert dump(topo) == pristine and leftovers(state) == []


def test_missing_nft_is_exit_3_and_nothing_changes(topo: Topology, tmp_path: Path) -> None:
    """libnftables replaced by an empty file (what the dynamic loader finds for it)."""
    topo.create()
    pristine = pristine_dump(topo)
    state = tmp_path / "state"
    empty = tmp_path / "not-a-library"
    empty.write_text("")
    real = "$(readlink -f \"$(ldconfig -p | awk '/libnftables.so.1 /{print $NF; exit}')\")"
    hide = f'mount --bind {empty} "{real}"'
    code, out = result(runner(topo, state, "--binding", "masquerade", prefix=hide))
    assert code == 3, out
    assert "libnftables (libnftables.so.1) cannot be loaded" in str(out["message"])
    assert "libnftables1" in str(out["message"])
    assert dump(topo) == pristine and leftovers(state) == []


def test_a_full_state_dir(topo: Topology, tmp_path: Path) -> None:
    """8 KiB free: refused before anything is touched. Room for the first record but
    not the last (filled during apply): a real ENOSPC, rolled back, no 0-byte file."""
    topo.create()
    pristine = pristine_dump(topo)
    state = tmp_path / "state"
    state.mkdir()
    tiny = f"mount -t tmpfs -o size=8k tmpfs {state}"
    done = runner(topo, state, "--binding", "bridge", prefix=tiny)
    code, out = result(done)
    assert code == 3 and "bytes free" in str(out["message"]), done.stdout
    assert dump(topo) == pristine
    counted = runner(topo, tmp_path / "count", "--binding", "bridge", "--count-steps")
    steps = result(counted)[1]["steps"]
    assert isinstance(steps, list) and steps[-2:] == ["state.write_text_atomic", "state.remove_txn"]
    cleanup(make_plan(topo, tmp_path / "count", "bridge"), tmp_path / "count", netns=topo.pod)
    assert settle(topo, pristine) == pristine
    # fill the file system just before the commit's interface record
    small = f"mount -t tmpfs -o size=256k tmpfs {state}"
    done = runner(
        topo, state, "--binding", "bridge", "--fill-state-at", str(len(steps) - 1), prefix=small
    )
    code, out = result(done)
    assert code == 3, done.stdout + done.stderr
    assert "No space left on device" in str(out["message"]), out
    assert settle(topo, pristine) == pristine
    listing = done.stdout.split("EXIT=")[-1]
    assert "filler" in listing and ".tmp" not in listing and "net-eth0.json" not in listing
    assert TXN_FILE not in listing


# ---- the netlink child killed half-way ----------------------------------------------


async def test_a_killed_netlink_child_is_recovered(pod: Topology, tmp_path: Path) -> None:
    state = tmp_path / "state"
    pristine = pristine_dump(pod)
    p = await asyncio.to_thread(make_plan, pod, state, "bridge")
    with armed(Faults(kill_at=12)):  # the forked child inherits the wrapping
        agent = Agent.fork()
    try:
        with pytest.raises(NetworkError, match=r"exited \(status -9\) before answering 'apply'"):
            await agent.call("apply", p, state, netns=pod.pod)
    finally:
        await agent.close()
    assert (state / TXN_FILE).exists()
    assert await asyncio.to_thread(call_once, "recover", state, netns=pod.pod) is True
    assert settle(pod, pristine) == pristine
    assert await asyncio.to_thread(call_once, "recover", state, netns=pod.pod) is False


async def test_the_launchers_runner_rolls_back_after_its_child_is_killed(
    pod: Topology, tmp_path: Path
) -> None:
    """AgentRunner (what run uses): the apply's child dies half-way → a fresh child rolls
    the pod back before the error goes on; the next apply (a fresh child) completes."""
    state = tmp_path / "state"
    pristine = pristine_dump(pod)
    p = await asyncio.to_thread(make_plan, pod, state, "bridge")
    with armed(Faults(kill_at=12)):
        agent = Agent.fork()
    runner = AgentRunner(state, agent, netns=pod.pod)
    try:
        with pytest.raises(NetworkError, match="before answering 'apply'"):
            await runner.apply(p)
    finally:
        await agent.close()
    assert not (state / TXN_FILE).exists()
    assert settle(pod, pristine) == pristine
    result = await runner.apply(p)  # no start-up child any more: a fresh one
    assert result.changes > 10
    await runner.cleanup(p)
    assert settle(pod, pristine) == pristine


async def test_a_cancelled_apply_stops_its_child_and_rolls_back(
    pod: Topology, tmp_path: Path
) -> None:
    """SIGTERM during set-up cancels the apply call: the child (here hung before step 12)
    is killed and the pod rolled back, bounded, before the cancellation goes on."""
    state = tmp_path / "state"
    pristine = pristine_dump(pod)
    p = await asyncio.to_thread(make_plan, pod, state, "bridge")
    with armed(Faults(pause_at=12)):
        agent = Agent.fork()
    runner = AgentRunner(state, agent, netns=pod.pod)
    started = time.monotonic()
    try:
        task = asyncio.create_task(runner.apply(p))
        for _ in range(100):  # the child hangs half-way (bounded: 10 s)
            if (state / TXN_FILE).exists() and "vlbr0" in dump(pod):
                break
            await asyncio.sleep(0.1)
        assert "vlbr0" in dump(pod) and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await agent.close()
    assert time.monotonic() - started < 30
    assert not agent.alive
    assert not (state / TXN_FILE).exists()
    assert settle(pod, pristine) == pristine


# ---- the run's NIC owners: a later NIC failing leaves nothing of the earlier ones -------


async def test_a_second_nic_failing_leaves_the_first_working_and_exit_restores_all(
    tmp_path: Path,
) -> None:
    """Boot wires NIC after NIC (launcher.nics, run's code path). The second NIC's apply
    fails half-way: it rolls back alone (the first NIC's nft rules put back), the first
    keeps working; leaving the owners (the run's exit) gives the pod back as it was."""
    topo = Topology(pod_ifaces=2)
    await asyncio.to_thread(topo.create)
    try:
        state = tmp_path / "state"
        pristine = await asyncio.to_thread(pristine_dump, topo)
        pod_state = await asyncio.to_thread(discover, topo.pod, state, hostname="pod-host")
        p = plan(build_spec("bridge", 2, ""), pod_state, PlanOptions())
        assert [n.pod_interface for n in p.nics] == ["eth0", "net1"]
        with pytest.raises(NetworkError, match="injected failure"):
            async with Nics(LocalRunner(state, topo.pod), state_dir=state) as nics:
                await nics.add(p.nics[0], serve=False, critical=True)
                first = await asyncio.to_thread(configured_dump, topo)
                with armed(Faults(fail_at=8)):
                    try:
                        await nics.add(p.nics[1], serve=False, critical=True)
                    finally:
                        now = await asyncio.to_thread(settle, topo, first)
                        assert now == first, "the failed NIC was not rolled back alone"
                        tables = nsrun(topo.pod, "nft", "list", "ruleset").stdout
                        assert "vltap0" in tables and "vltap1" not in tables
                        assert sorted(p.name for p in state.iterdir()) == ["net-eth0.json"]
        # sorted: the kernel lists the two fe80::/64 prefix routes in the order their
        # links came up, and eth0 went down and up
        deadline = time.monotonic() + 10
        while sorted(dump(topo).splitlines()) != sorted(pristine.splitlines()):
            assert time.monotonic() < deadline, dump(topo)
            await asyncio.sleep(0.1)
        assert leftovers(state) == []
        assert "virt_launcher" not in nsrun(topo.pod, "nft", "list", "ruleset").stdout
    finally:
        await asyncio.to_thread(topo.destroy)

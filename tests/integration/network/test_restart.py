"""Restart safety: kill -9 the applying process, apply again from the state dir; state
files the launcher did not write, a read-only state dir."""

from __future__ import annotations

import json
import pickle
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from launcher.errors import NetworkError
from launcher.network import PlanOptions, apply, cleanup, discover, plan
from launcher.network.discover import link_to_json
from testbed.netns import Topology
from testbed.runner import build_spec

REPO = Path(__file__).resolve().parents[3]


def _argv(topo: Topology, state: Path, binding: str, hold: bool) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "testbed.runner",
        "--netns",
        topo.pod,
        "--state-dir",
        str(state),
        "--binding",
        binding,
        "--guest-netns",
        topo.guest,
        "--ports",
        "80",
    ]
    return [*argv, "--hold"] if hold else argv


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_kill9_then_apply_again_gives_same_result(
    topo: Topology, tmp_path: Path, binding: str
) -> None:
    topo.create()
    state = tmp_path / "state"
    first = subprocess.Popen(
        _argv(topo, state, binding, hold=True), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        data = json.loads(first.stdout.readline())
        assert data.get("changes", 0) > 0, data
        before = topo.settled_dump()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    if binding == "bridge":
        # the live pod interface no longer has its address: only the cache knows it
        with pytest.raises(NetworkError, match="no IPv4 or global IPv6 address"):
            plan(build_spec(binding, 1, "80"), discover(topo.pod))
    second = subprocess.run(
        _argv(topo, state, binding, hold=False),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    again = json.loads(second.stdout)
    assert again["changes"] == 0
    for key in ("dhcp4", "dhcp6", "ra", "device", "bridge", "tap", "pod_port"):
        assert again["plan"]["nics"][0][key] == data["plan"]["nics"][0][key], key
    assert again["plan"]["nftables"] == data["plan"]["nftables"]
    after = topo.settled_dump()
    assert after == before
    assert after.count("vlbr0:") == 1 and after.count("vltap0@") == 1


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_a_version_1_half_done_record_is_rolled_back_and_the_start_completes(
    topo: Topology, tmp_path: Path
) -> None:
    """An older launcher left phase 'configuring' (it used to mean exit 3 forever)."""
    topo.create()
    state = tmp_path / "state"
    state.mkdir()
    original = discover(topo.pod).link("eth0")
    v1 = {
        "version": 1,
        "pod_interface": "eth0",
        "binding": "bridge",
        "phase": "configuring",
        "original": link_to_json(original),
    }
    (state / "net-eth0.json").write_text(json.dumps(v1))
    done = _run(_argv(topo, state, "bridge", hold=False))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["changes"] > 0
    assert "rolling back an unfinished pod network set-up of eth0" in done.stderr
    assert json.loads((state / "net-eth0.json").read_text())["version"] == 2


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("net-eth0.json", b"{not json", "not JSON"),
        ("net-eth0.json", b"\xff\xfe\x00\x01", "not UTF-8 text"),
        ("net-eth0.json", b'{"version": 2, "phase": "configured"}', "is missing"),
        ("network-txn.json", b"\x00garbage", "unfinished network set-up"),
    ],
)
def test_a_state_file_we_did_not_write_is_exit_3_naming_it(
    topo: Topology, tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    topo.create()
    state = tmp_path / "state"
    state.mkdir()
    (state / name).write_bytes(content)
    before = topo.settled_dump()
    done = _run(_argv(topo, state, "bridge", hold=False))
    assert done.returncode == 3, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["error"] == "StateCacheError"
    assert str(state / name) in out["message"] and why in out["message"]
    assert "delete the file" in out["message"] and "recreate the pod" in out["message"]
    assert topo.settled_dump() == before


def test_a_garbage_nft_digest_is_only_a_cache(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    state = tmp_path / "state"
    first = _run(_argv(topo, state, "masquerade", hold=False))
    assert first.returncode == 0, first.stderr
    (state / "nft.sha256").write_bytes(b"\xff\x00 not a digest")
    again = _run(_argv(topo, state, "masquerade", hold=False))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is not a digest the launcher wrote; the ruleset is loaded again" in again.stderr
    assert json.loads(again.stdout)["changes"] == 1  # the ruleset, nothing else
    assert len((state / "nft.sha256").read_text().strip()) == 64


def test_kill9_half_way_then_the_restart_completes(topo: Topology, tmp_path: Path) -> None:
    """Killed (stand-in guest veth, as the tests' DHCP runs use) just before the first
    pod address is removed; the restart rolls back and applies to the clean result."""
    topo.create()
    clean = tmp_path / "clean"
    counted = _run([*_argv(topo, clean, "bridge", hold=False), "--count-steps"])
    steps = json.loads(counted.stdout)["steps"]
    reference = topo.settled_dump()
    plan_clean = json.loads(counted.stdout)["plan"]
    cleanup(
        plan(
            build_spec("bridge", 1, "80"),
            discover(topo.pod, clean, hostname="pod-host"),
            PlanOptions(stand_in_netns=topo.guest),
        ),
        clean,
        netns=topo.pod,
    )
    state = tmp_path / "state"
    kill_at = steps.index("Netlink.del_address") + 1
    first = _run([*_argv(topo, state, "bridge", hold=False), "--kill-at", str(kill_at)])
    assert first.returncode == -signal.SIGKILL
    record = json.loads((state / "network-txn.json").read_text())
    assert [a["address"] for a in record["nics"][0]["snapshot"]["addresses"]][:1] == [
        "10.77.0.5/24"
    ]
    done = _run(_argv(topo, state, "bridge", hold=False))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["plan"]["nics"][0]["dhcp4"] == plan_clean["nics"][0]["dhcp4"]
    assert not (state / "network-txn.json").exists()
    assert _normal(topo.settled_dump()) == _normal(reference)


def _normal(dump: str) -> str:
    text = re.sub(r"(?m)^\d+: ", "", dump)
    text = re.sub(r"(?m)^(vltap\d+@\S+ .*?link/ether )\S+", r"\1<mac>", text)
    return re.sub(r"@if\d+", "@if", text)


def test_a_read_only_state_dir_on_restart_is_exit_3(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    state = tmp_path / "state"
    first = _run(_argv(topo, state, "bridge", hold=False))
    assert first.returncode == 0, first.stderr
    before = topo.settled_dump()
    argv = " ".join(_argv(topo, state, "bridge", hold=False))
    script = f"mount --bind -o ro {state} {state} && exec {argv}"
    done = _run(["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    assert done.returncode == 3, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["error"] == "StateCacheError" and "is read-only" in out["message"]
    assert "--state-dir" in out["message"]
    assert topo.settled_dump() == before


SERVE6 = """
import asyncio, pickle, sys
from pathlib import Path
from launcher.nics import _make_servers

async def main():
    nic = pickle.loads(Path(sys.argv[1]).read_bytes())
    server = next(s for kind, s in _make_servers(nic, Path(sys.argv[2])) if kind == "dhcp6")
    async with server:
        print(server.duid.hex(), flush=True)

asyncio.run(main())
"""


def test_a_dhcp6_duid_file_we_did_not_write_is_regenerated_and_logged(
    topo: Topology, tmp_path: Path
) -> None:
    """The DUID file is only a cache: the NIC's DHCPv6 server (the run's code path) opens
    on the real bridge, logs one warning naming the file and keeps a new DUID there."""
    topo.create()
    state = tmp_path / "state"
    p = plan(
        build_spec("bridge", 1, ""),
        discover(topo.pod, state),
        PlanOptions(stand_in_netns=topo.guest),
    )
    apply(p, state, netns=topo.pod)
    try:
        duid_file = state / "dhcp6-duid-eth0"
        duid_file.write_bytes(b"\xff\xfe not a uuid \x00")
        (tmp_path / "nic.pickle").write_bytes(pickle.dumps(p.nics[0]))
        argv = ["ip", "netns", "exec", topo.pod, sys.executable, "-c", SERVE6]
        done = _run([*argv, str(tmp_path / "nic.pickle"), str(state)])
        assert done.returncode == 0, done.stderr
        assert f"server DUID file {duid_file} holds no UUID" in done.stderr
        kept = uuid.UUID(duid_file.read_text().strip())
        assert done.stdout.strip() == "0004" + kept.hex  # DUID-UUID: type 4, the UUID
        again = _run([*argv, str(tmp_path / "nic.pickle"), str(state)])
        assert again.stdout == done.stdout and "holds no UUID" not in again.stderr
    finally:
        cleanup(p, state, netns=topo.pod)

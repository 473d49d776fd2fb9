"""Restart safety: kill -9 the applying process, apply again from the state dir."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import NetworkError
from launcher.network import discover, plan
from launcher.network.discover import link_to_json
from launcher.network.state import PHASE_CONFIGURING, InterfaceRecord, write_record
from testbed.netns import Topology, nsrun
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


def test_half_done_phase_is_a_clear_error(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    state = tmp_path / "state"
    original = discover(topo.pod).link("eth0")
    write_record(
        state, InterfaceRecord("eth0", "bridge", PHASE_CONFIGURING, link_to_json(original))
    )
    done = subprocess.run(
        _argv(topo, state, "bridge", hold=False),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    out = json.loads(done.stdout)
    assert out["error"] == "StateCacheError" and "'configuring'" in out["message"]
    assert "vlbr0" not in nsrun(topo.pod, "ip", "-o", "link").stdout


def test_corrupt_state_file_is_a_clear_error(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    state = tmp_path / "state"
    state.mkdir()
    (state / "net-eth0.json").write_text("{not json")
    done = subprocess.run(
        _argv(topo, state, "bridge", hold=False),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"] == "StateCacheError"


def test_kill9_half_way_is_a_clear_error_on_restart(topo: Topology, tmp_path: Path) -> None:
    """Killed after writing the phase but before the pod address was handed over."""
    topo.create()
    state = tmp_path / "state"
    argv = [*_argv(topo, state, "bridge", hold=False), "--pause-before-remove"]
    first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "PAUSED"
        record = json.loads((state / "net-eth0.json").read_text())
        assert record["phase"] == "configuring"
        assert record["original"]["addresses4"] == ["10.77.0.5/24"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    done = subprocess.run(
        _argv(topo, state, "bridge", hold=False),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    out = json.loads(done.stdout)
    assert out["error"] == "StateCacheError"
    assert "'eth0'" in out["message"] and "recreated" in out["message"]

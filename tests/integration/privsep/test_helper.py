"""The privileged helper as a real process (needs root): what it keeps, what it answers,
what it refuses, and that it dies with the launcher.

Each check runs a small launcher stand-in (``python -c``) inside a throwaway network
namespace (``ip netns exec``), so the DHCP ports the helper binds there collide with
nothing; the stand-in forks or spawns the helper exactly as the launcher does and
prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import sh

REPO = Path(__file__).resolve().parents[3]
NS = f"privsep-h-{os.getpid() % 100000}"
# NET_BIND_SERVICE, NET_ADMIN, NET_RAW, KILL
HELPER_CAPS = (1 << 10) | (1 << 12) | (1 << 13) | (1 << 5)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("the helper tests need root (network namespaces, capabilities)")
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        sh("ip", "-n", NS, "link", "add", "vlbr-h", "type", "bridge")
        yield NS
    finally:
        sh("ip", "netns", "del", NS, check=False)


def stand_in(ns: str, body: str, timeout: float = 60) -> Any:
    """Run ``body`` (with ``helper`` spawned, ``out`` a dict printed as JSON at the end)."""
    code = (
        textwrap.dedent(
            """
        import json, os, socket, sys
        from launcher.privsep.helper import Helper, _recv_message
        from launcher.privsep.codec import HEADER, OpenSocket, OpenTap, SignalProcess, frame
        helper = Helper.spawn()
        out = {"helper": helper.pid}
        """
        )
        + textwrap.dedent(body)
        + "\nprint(json.dumps(out))\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_it_keeps_only_its_four_capabilities_and_cannot_gain_more(netns: str) -> None:
    out = stand_in(
        netns,
        """
        helper.call_blocking(OpenSocket("icmp6"))  # it has started and answered
        lines = open(f"/proc/{helper.pid}/status").read().splitlines()
        fields = dict(line.split(":", 1) for line in lines)
        out.update({k: fields[k].strip() for k in ("CapEff", "CapPrm", "CapInh", "NoNewPrivs")})
        """,
    )
    assert int(out["CapEff"], 16) == int(out["CapPrm"], 16) == HELPER_CAPS
    assert int(out["CapInh"], 16) == 0 and out["NoNewPrivs"] == "1"


def test_typed_requests_get_their_sockets_and_taps_as_fds(netns: str) -> None:
    out = stand_in(
        netns,
        """
        import subprocess
        _, fds = helper.call_blocking(OpenSocket("udp4", "vlbr-h", 67))
        s = socket.socket(fileno=fds[0])
        device = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
        out["udp4"] = [s.getsockname()[1], device.rstrip(b"\\0").decode()]
        _, fds = helper.call_blocking(OpenSocket("icmp6"))
        out["icmp6"] = socket.socket(fileno=fds[0]).type == socket.SOCK_RAW
        _, fds = helper.call_blocking(OpenSocket("link", "vlbr-h"))
        link = socket.socket(fileno=fds[0])
        out["link"] = [link.family == socket.AF_PACKET, link.getsockname()[0]]
        subprocess.run(["ip", "tuntap", "add", "vltap-h", "mode", "tap", "multi_queue"], check=True)
        _, fds = helper.call_blocking(OpenTap("vltap-h", 2))
        out["tap"] = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
        try:
            helper.call_blocking(OpenTap("nosuchtap", 1))
        except Exception as err:
            out["missing"] = str(err)
        """,
    )
    assert out["udp4"] == [67, "vlbr-h"]
    assert out["icmp6"] is True
    assert out["link"] == [True, "vlbr-h"]  # bound to the one interface asked for
    assert out["tap"] == ["/dev/net/tun", "/dev/net/tun"]
    assert "tap 'nosuchtap' does not exist" in out["missing"]


def test_malformed_requests_are_refused_and_change_nothing(netns: str) -> None:
    out = stand_in(
        netns,
        """
        import pickle
        def raw(body, fds=()):
            msg = HEADER.pack(len(body)) + body
            if fds:
                socket.send_fds(helper._sock, [msg], list(fds))
            else:
                helper._sock.sendall(msg)
            reply, got = _recv_message(helper._sock)
            return json.loads(reply), len(got)
        r, w = os.pipe()
        before = sorted(os.listdir("/sys/class/net"))
        udp = '"kind": "udp4", "interface": "vlbr-h"'
        out["answers"] = [
            raw(pickle.dumps(("apply", (), {}))),
            raw(b'{"op": "exec", "args": {"argv": ["sh"]}}'),
            raw(b'{"op": "open_socket", "args": {%s, "port": "67"}}' % udp.encode()),
            raw(b'{"op": "open_socket", "args": {"kind": "udp4", "interface": "../x", "port": 1}}'),
            raw(b'{"op": "open_tap", "args": {"name": "vltap-h", "queues": 1000}}'),
            raw(b'{"op": "open_socket", "args": {"kind": "icmp6"}}', [r]),
        ]
        out["same_links"] = sorted(os.listdir("/sys/class/net")) == before
        _, fds = helper.call_blocking(OpenSocket("icmp6"))  # still serving
        out["after"] = len(fds)
        helper._sock.sendall(HEADER.pack(1 << 30))  # a length it will not read: it leaves
        out["code"] = helper._proc.wait(5.0)
        """,
    )
    answers = out["answers"]
    assert all(set(a) == {"error"} and got == 0 for a, got in answers), answers
    texts = [a["error"] for a, _ in answers]
    assert texts[0].startswith("refused: request is not JSON")
    assert "op: 'exec' is not one of" in texts[1]
    assert "port: '67' is not an integer" in texts[2]
    assert "interface '../x' is not a Linux interface name" in texts[3]
    assert "queues: 1000 is not between 1 and 64" in texts[4]
    assert "came with 1 file descriptor" in texts[5]
    assert out["same_links"]  # nothing created
    assert out["after"] == 1 and out["code"] == 3


def test_it_dies_with_the_launcher(netns: str) -> None:
    code = (
        "import sys, time\n"
        "from launcher.privsep.helper import Helper\n"
        "h = Helper.fork()\n"
        "print(h.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        helper = int(parent.stdout.readline())
        assert Path(f"/proc/{helper}").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{helper}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                break  # gone
            if state == "Z":  # dead, waiting for its new parent to reap it
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"helper {helper} outlived its launcher")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_it_signals_only_children_of_the_launcher_and_only_stop_signals(netns: str) -> None:
    out = stand_in(
        netns,
        """
        import signal, subprocess
        child = subprocess.Popen(["sleep", "60"], user=107, group=107, extra_groups=[])
        out["refused"] = []
        for request in (
            SignalProcess(child.pid, signal.SIGUSR1),  # not a stop signal
            SignalProcess(os.getppid(), signal.SIGKILL),  # not a child of ours
            SignalProcess(1, signal.SIGKILL),
        ):
            try:
                helper.call_blocking(request)
            except Exception as err:
                out["refused"].append(str(err))
        helper.call_blocking(SignalProcess(child.pid, signal.SIGKILL))
        out["code"] = child.wait(5)
        """,
    )
    refused = out["refused"]
    assert len(refused) == 3, refused
    assert "is not SIGCONT, SIGTERM or SIGKILL" in refused[0]
    assert "is not a child of the launcher" in refused[1] and "is not a child" in refused[2]
    assert out["code"] == -9

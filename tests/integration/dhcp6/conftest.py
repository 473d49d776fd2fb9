"""Fixtures for DHCPv6/RA integration tests: a server netns and a client netns on a veth.

``v6`` builds ``d6-sN``/``d6-cN`` joined by veth ``d6aN`` (server side) and ``d6bN``
(client side, the guest MAC ``52:54:00:d6:00:NN``), with DAD off and ``accept_ra=1`` on
the client. ``v6.serve(...)`` runs ``python -m dhcp serve`` in the server namespace and
waits (bounded) until both the DHCPv6 and RA servers are up; ``v6.spawn(...)`` starts a
client in the client namespace. Teardown stops every process (SIGTERM, then SIGKILL),
deletes both namespaces and leaves nothing on the host but the per-test tmp dir.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import sh

REPO = Path(__file__).resolve().parents[3]
GUEST_ADDR = "fd00:d6::10"
DNS6 = "fd00:d6::53"
SEARCH = ("svc.cluster.local", "cluster.local")
MTU = 1400
_counter = itertools.count(os.getpid() % 60)


@dataclass
class V6Net:
    """One server/client namespace pair."""

    n: int
    tmp: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    pidfiles: list[Path] = field(default_factory=list)

    @property
    def sns(self) -> str:
        return f"d6-s{self.n}"

    @property
    def cns(self) -> str:
        return f"d6-c{self.n}"

    @property
    def sif(self) -> str:
        return f"d6a{self.n}"

    @property
    def cif(self) -> str:
        return f"d6b{self.n}"

    @property
    def mac(self) -> str:
        return f"52:54:00:d6:00:{self.n:02x}"

    def server_link_local(self) -> str:
        out = sh("ip", "-n", self.sns, "-j", "-6", "addr", "show", "dev", self.sif, "scope", "link")
        for link in json.loads(out.stdout):
            for a in link.get("addr_info", []):
                return str(a["local"])
        pytest.fail(f"{self.sif} has no link-local address")

    def serve(
        self, *args: str, default: bool = True, wrap: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        """Start ``python -m dhcp serve``; ``default`` adds the standard lease/DNS/RA flags,
        ``wrap`` is a command prefix (e.g. setpriv) inside the namespace."""
        std = (
            [
                "--lease6", f"{self.mac}={GUEST_ADDR}/64",
                "--dns6", DNS6,
                "--search", *SEARCH,
                "--ra", "--mtu", str(MTU), "--ra-interval", "30",
            ]
            if default
            else []
        )  # fmt: skip
        log_path = self.tmp / f"server{len(self.procs)}.log"
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", self.sns, *wrap, sys.executable, "-m", "dhcp", "serve",
                "--interface", self.sif, "--log-level", "debug", *std, *args,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("w"),
            text=True,
        )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 15
        want = ("DHCPv6 on", "router advertisements on") if default else ("DHCPv6 on",)
        while time.monotonic() < deadline:
            text = log_path.read_text()
            if all(w in text for w in want):
                return proc
            if proc.poll() is not None:
                pytest.fail(f"dhcp server exited {proc.returncode}: {text[-2000:]}")
            time.sleep(0.05)
        pytest.fail(f"dhcp server did not start within 15 s: {log_path.read_text()[-2000:]}")

    def spawn(self, *argv: str, log: str) -> subprocess.Popen[str]:
        """Start a command in the client namespace (stopped at teardown)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.cns, *argv],
            stdout=(self.tmp / log).open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """SIGTERM, bounded wait, SIGKILL."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def client_state(self) -> dict[str, Any]:
        """What the client's kernel has: global IPv6 addresses and default routes."""
        addrs = json.loads(
            sh("ip", "-n", self.cns, "-j", "-6", "addr", "show", "dev", self.cif).stdout
        )
        routes = json.loads(sh("ip", "-n", self.cns, "-j", "-6", "route", "show", "default").stdout)
        return {
            "addresses": [
                a["local"]
                for link in addrs
                for a in link.get("addr_info", [])
                if a.get("scope") == "global"
            ],
            "gateways": [(r.get("gateway"), r.get("dev")) for r in routes],
        }

    def wait_configured(self, timeout: float = 30.0) -> dict[str, Any]:
        """Poll (bounded) until the guest address and a default route are both present."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.client_state()
            if GUEST_ADDR in state["addresses"] and state["gateways"]:
                return state
            time.sleep(0.2)
        return state

    def pid_kill(self, pidfile: Path) -> None:
        """Stop a daemon that wrote its pid file (dhclient forks away)."""
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _wait_link_local(ns: str, ifname: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "-n", ns, "-j", "-6", "addr", "show", "dev", ifname, "scope", "link")
        if any(
            not a.get("tentative") for link in json.loads(out.stdout) for a in link["addr_info"]
        ):
            return
        time.sleep(0.05)
    pytest.fail(f"{ifname} in {ns} got no usable link-local address within {timeout} s")


@pytest.fixture
def v6(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[V6Net]:
    """A fresh namespace pair; removed with everything in it afterwards.

    With ``D6_CAPTURE_DIR`` set, tcpdump records the link's DHCPv6 and ICMPv6 traffic
    into ``<dir>/<test>.pcap`` (how tests/data/dhcp6/ was made).
    """
    net = V6Net(next(_counter), tmp_path)
    for ns in (net.sns, net.cns):
        sh("ip", "netns", "del", ns, check=False)
    try:
        sh("ip", "netns", "add", net.sns)
        sh("ip", "netns", "add", net.cns)
        for ns in (net.sns, net.cns):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", net.sif, "netns", net.sns, "type", "veth",
            "peer", "name", net.cif, "netns", net.cns, "address", net.mac,
        )  # fmt: skip
        sh("ip", "netns", "exec", net.cns, "sysctl", "-qw", f"net.ipv6.conf.{net.cif}.accept_ra=1")
        sh("ip", "-n", net.sns, "link", "set", net.sif, "up")
        sh("ip", "-n", net.cns, "link", "set", net.cif, "up")
        _wait_link_local(net.sns, net.sif)
        _wait_link_local(net.cns, net.cif)
        capture = os.environ.get("D6_CAPTURE_DIR")
        if capture:
            pcap = Path(capture) / f"{request.node.name}.pcap"
            dump = subprocess.Popen(
                ["ip", "netns", "exec", net.sns, "tcpdump", "-i", net.sif,
                 "-U", "--immediate-mode", "-w", str(pcap),
                 "udp port 546 or udp port 547 or icmp6"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            net.procs.insert(0, dump)
            time.sleep(1.0)
        yield net
    finally:
        for pf in net.pidfiles:
            net.pid_kill(pf)
        for proc in reversed(net.procs):
            net.stop(proc)
        for ns in (net.sns, net.cns):
            sh("ip", "netns", "del", ns, check=False)

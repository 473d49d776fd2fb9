"""Fixtures for DHCPv4 integration tests: a server netns and a client netns joined by a veth.

``net`` builds ``d4-sN``/``d4-cN`` with veth ``d4sN`` (server side, 169.254.75.1/16)
and ``d4cN`` (client side, MAC 02:d4:00:00:0N:02), and removes both namespaces, every
process started in them and the per-test files afterwards. ``net.serve(...)`` runs
``python -m dhcp serve`` in the server namespace as a subprocess and waits until it
listens; ``net.client(...)`` runs a command in the client namespace with a timeout.
"""

from __future__ import annotations

import itertools
import json
import os
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
SERVER_ADDRESS = "169.254.75.1"
_counter = itertools.count(os.getpid() % 50)


@dataclass
class Net:
    """One server/client namespace pair for a test."""

    n: int
    tmp: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def sns(self) -> str:
        return f"d4-s{self.n}"

    @property
    def cns(self) -> str:
        return f"d4-c{self.n}"

    @property
    def sif(self) -> str:
        return f"d4s{self.n}"

    @property
    def cif(self) -> str:
        return f"d4c{self.n}"

    @property
    def mac(self) -> str:
        return f"02:d4:00:00:{self.n:02x}:02"

    def serve(self, *args: str, interface: str | None = None) -> subprocess.Popen[str]:
        """Start ``python -m dhcp serve`` in the server netns; wait until it listens."""
        log = (self.tmp / f"server{len(self.procs)}.log").open("w+")
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.sns,
                sys.executable,
                "-m",
                "dhcp",
                "serve",
                "--interface",
                interface or self.sif,
                "--log-level",
                "debug",
                *args,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            log.seek(0)
            if "DHCPv4 server listening" in log.read():
                return proc
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"dhcp serve exited {proc.returncode}: {log.read()}")
            time.sleep(0.05)
        pytest.fail("dhcp serve did not start listening within 15 s")

    def server_log(self, index: int = 0) -> list[dict[str, Any]]:
        """The JSON log lines of the ``index``-th server started."""
        text = (self.tmp / f"server{index}.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def client(
        self, *argv: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the client netns."""
        return sh("ip", "netns", "exec", self.cns, *argv, timeout=timeout, check=check)

    def addrs(self) -> list[dict[str, Any]]:
        """IPv4 addresses configured on the client interface (``ip -j addr``)."""
        out = self.client("ip", "-j", "-4", "addr", "show", "dev", self.cif).stdout
        return [a for link in json.loads(out) for a in link.get("addr_info", [])]

    def routes(self) -> list[dict[str, Any]]:
        """IPv4 routes in the client netns (``ip -j route``)."""
        return list(json.loads(self.client("ip", "-j", "-4", "route", "show").stdout))

    def mtu(self) -> int:
        out = self.client("ip", "-j", "link", "show", "dev", self.cif).stdout
        return int(json.loads(out)[0]["mtu"])


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = next(_counter) % 100
    net = Net(n=n, tmp=tmp_path)
    for ns in (net.sns, net.cns):
        sh("ip", "netns", "del", ns, check=False)
    try:
        sh("ip", "netns", "add", net.sns)
        sh("ip", "netns", "add", net.cns)
        sh(
            "ip",
            "link",
            "add",
            net.sif,
            "netns",
            net.sns,
            "type",
            "veth",
            "peer",
            "name",
            net.cif,
            "netns",
            net.cns,
        )
        sh("ip", "-n", net.sns, "link", "set", net.sif, "address", f"02:d4:00:00:{n:02x}:01", "up")
        sh("ip", "-n", net.cns, "link", "set", net.cif, "address", net.mac, "up")
        sh("ip", "-n", net.sns, "addr", "add", f"{SERVER_ADDRESS}/16", "dev", net.sif)
        for ns in (net.sns, net.cns):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield net
    finally:
        for proc in net.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for ns in (net.cns, net.sns):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)
        for path in Path("/var/lib/dhcpcd").glob(f"{net.cif}*"):
            path.unlink()

"""Test helpers: a pod/peer/guest namespace topology and one-shot TCP endpoints.

Used by the network integration tests and bench/network.py. The "pod" netns has
``eth0`` wired by veth to ``peer0`` in the "peer" netns (the rest of the cluster, also
the pod's gateway); the "guest" netns receives the stand-in end of each tap. Every
name starts with ``nw`` plus a random token, so parallel runs never collide, and
``Topology.destroy`` removes everything.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field

from testbed.harness import sh

POD4 = "10.77.0.5/24"
PEER4 = "10.77.0.1/24"
POD6 = "fd77::5/64"
PEER6 = "fd77::1/64"
POD_MAC = "0a:58:0a:4d:00:05"
POD_MTU = 1440


def nsrun(
    ns: str, *argv: str, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command inside netns ``ns``."""
    return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


@dataclass
class Topology:
    """The namespaces of one test; ``pod``, ``peer``, ``guest`` are netns names."""

    token: str = field(default_factory=lambda: secrets.token_hex(3))
    pod_ifaces: int = 1

    @property
    def pod(self) -> str:
        return f"nw-pod-{self.token}"

    @property
    def peer(self) -> str:
        return f"nw-peer-{self.token}"

    @property
    def guest(self) -> str:
        return f"nw-guest-{self.token}"

    def create(
        self,
        *,
        ipv4: bool = True,
        ipv6: bool = True,
        default_route: bool = True,
        calico32: bool = False,
    ) -> Topology:
        """Build the namespaces; pod interfaces eth0 (and net1… when pod_ifaces > 1)."""
        for ns in (self.pod, self.peer, self.guest):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i in range(self.pod_ifaces):
            pod_if = "eth0" if i == 0 else f"net{i}"
            peer_if = f"peer{i}"
            sh(
                "ip",
                "-n",
                self.pod,
                "link",
                "add",
                pod_if,
                "type",
                "veth",
                "peer",
                "name",
                peer_if,
                "netns",
                self.peer,
            )
            mac = POD_MAC if i == 0 else f"0a:58:0a:4d:{i:02x}:05"
            sh("ip", "-n", self.pod, "link", "set", pod_if, "mtu", str(POD_MTU), "address", mac)
            sh("ip", "-n", self.peer, "link", "set", peer_if, "mtu", str(POD_MTU), "up")
            sh("ip", "-n", self.pod, "link", "set", pod_if, "up")
            if i > 0:
                sh("ip", "-n", self.pod, "addr", "add", f"10.78.{i}.5/24", "dev", pod_if)
                sh("ip", "-n", self.peer, "addr", "add", f"10.78.{i}.1/24", "dev", peer_if)
                continue
            if ipv4 and calico32:
                sh("ip", "-n", self.pod, "addr", "add", "10.77.0.5/32", "dev", "eth0")
                sh("ip", "-n", self.peer, "addr", "add", "169.254.1.1/32", "dev", "peer0")
                sh("ip", "-n", self.peer, "route", "add", "10.77.0.5/32", "dev", "peer0")
                sh(
                    "ip",
                    "-n",
                    self.pod,
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                )
                sh(
                    "ip",
                    "-n",
                    self.pod,
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                )
            elif ipv4:
                sh("ip", "-n", self.pod, "addr", "add", POD4, "dev", "eth0")
                sh("ip", "-n", self.peer, "addr", "add", PEER4, "dev", "peer0")
                if default_route:
                    sh("ip", "-n", self.pod, "route", "add", "default", "via", "10.77.0.1")
            if ipv6:
                sh("ip", "-n", self.pod, "addr", "add", POD6, "dev", "eth0", "nodad")
                sh("ip", "-n", self.peer, "addr", "add", PEER6, "dev", "peer0", "nodad")
                if default_route:
                    sh("ip", "-n", self.pod, "-6", "route", "add", "default", "via", "fd77::1")
        return self

    def destroy(self) -> None:
        """Delete the namespaces (and with them every interface and nft table)."""
        for ns in (self.pod, self.peer, self.guest):
            sh("ip", "netns", "del", ns, check=False)

    def settled_dump(self, timeout: float = 10.0) -> str:
        """``dump`` once carriers are up and two dumps 0.5 s apart agree (bounded)."""
        deadline = time.monotonic() + timeout
        last = self.dump()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.dump()
            if now == last and "NO-CARRIER" not in now and "tentative" not in now:
                return now
            last = now
        return last

    def dump(self) -> str:
        """Links, addresses, routes and the nft ruleset of the pod netns (for diffing)."""
        parts = [
            sh("ip", "-n", self.pod, "-d", "-o", "link").stdout,
            sh("ip", "-n", self.pod, "-o", "addr").stdout,
            sh("ip", "-n", self.pod, "route").stdout,
            sh("ip", "-n", self.pod, "-6", "route").stdout,
            nsrun(self.pod, "nft", "list", "ruleset").stdout,
        ]
        # bridge timers count down on their own: drop the value after each *_timer word
        out = []
        for line in "".join(parts).splitlines():
            words = line.split()
            out.append(
                " ".join(
                    w for i, w in enumerate(words) if not (i and words[i - 1].endswith("timer"))
                )
            )
        return "\n".join(out)


SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    c, addr = s.accept()
except TimeoutError:
    print("timeout", flush=True)
    sys.exit(3)
c.sendall(b"hello")
print(addr[0], flush=True)
c.close()
"""

CLIENT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
if len(sys.argv) > 4:
    s.bind((sys.argv[4], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    data = s.recv(5)
except OSError as err:
    print(f"error {err}", flush=True)
    sys.exit(2)
print(data.decode(), flush=True)
sys.exit(0 if data == b"hello" else 1)
"""


class Server:
    """A one-connection TCP server in a netns; ``result()`` is the client's address or None."""

    def __init__(self, ns: str, host: str, port: int, timeout: float = 4.0) -> None:
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                SERVER,
                host,
                str(port),
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"server in {ns} on {host}:{port} did not start: {err}")

    def result(self, timeout: float = 10.0) -> str | None:
        out, _ = self.proc.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        return lines[-1] if self.proc.returncode == 0 and lines else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def connect(ns: str, host: str, port: int, timeout: float = 2.0, source: str | None = None) -> bool:
    """True when a TCP client in ``ns`` reached a Server at host:port."""
    argv = [sys.executable, "-c", CLIENT, host, str(port), str(timeout)]
    if source:
        argv.append(source)
    return nsrun(ns, *argv, check=False, timeout=timeout + 10).returncode == 0


def ping(ns: str, host: str, count: int = 1, wait: float = 1.0, source: str | None = None) -> bool:
    """True when ``ns`` gets a ping answer from ``host`` (bounded retries)."""
    argv = ["ping", "-c", str(count), "-W", str(wait)]
    if source:
        argv += ["-I", source]
    return nsrun(ns, *argv, host, check=False, timeout=wait * count + 10).returncode == 0


def wait_for(pred: object, timeout: float = 10.0, interval: float = 0.2) -> bool:
    """Poll ``pred()`` until it is true or ``timeout`` passes (bounded)."""
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def is_root() -> bool:
    return os.geteuid() == 0

"""The doctor's ARP / ND probes (launcher.status.probe) against a real kernel in netns.

Two namespaces ``pr-a-<token>`` / ``pr-b-<token>`` joined by a veth; the probe runs in A
(``ip netns exec``), the kernel of B answers. Checked: an address B holds is answered for
IPv4 and IPv6 with B's MAC; one nobody holds is "no answer" within the bound; frames and
a DHCP request from a MAC other than the expected one are reported as strangers; without
CAP_NET_RAW the probe says so and names the pod field.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import ipaddress, json, sys
from launcher.status.probe import arp_probe, nd_probe, link_local_from_mac
kind, target, expect = sys.argv[1], sys.argv[2], sys.argv[3] or None
mac = open("/sys/class/net/va/address").read().strip()
if kind == "arp":
    r = arp_probe("va", ipaddress.IPv4Address(target), source_mac=mac, timeout=0.5,
                  expect_mac=expect)
else:
    r = nd_probe("va", ipaddress.IPv6Address(target), source_mac=mac,
                 source_ip=link_local_from_mac(mac), timeout=0.5, expect_mac=expect)
print(json.dumps({"answered": r.answered, "mac": r.mac, "detail": r.detail,
                  "strangers": [list(s) for s in r.strangers]}))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert not check or done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done


@pytest.fixture
def pair() -> Iterator[tuple[str, str, str]]:
    token = secrets.token_hex(3)
    a, b = f"pr-a-{token}", f"pr-b-{token}"
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        sh("ip", "-n", a, "link", "set", "va", "up")
        sh("ip", "-n", b, "link", "set", "vb", "up")
        sh("ip", "-n", b, "addr", "add", "10.61.0.2/24", "dev", "vb")
        sh("ip", "-n", b, "addr", "add", "fd61::2/64", "dev", "vb", "nodad")
        mac = sh("ip", "netns", "exec", b, "cat", "/sys/class/net/vb/address").stdout.strip()
        yield a, b, mac
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def probe(ns: str, kind: str, target: str, expect: str = "", *wrap: str) -> dict[str, object]:
    done = sh("ip", "netns", "exec", ns, *wrap, sys.executable, "-c", PROBE, kind, target, expect)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_answered_by_the_kernel_that_holds_the_address(pair: tuple[str, str, str]) -> None:
    a, _, mac = pair
    assert probe(a, "arp", "10.61.0.2") == {
        "answered": True, "mac": mac, "detail": "", "strangers": []
    }  # fmt: skip
    six = probe(a, "nd", "fd61::2")
    assert six["answered"] is True and six["mac"] == mac


def test_nobody_answers_within_the_bound(pair: tuple[str, str, str]) -> None:
    a, _, _ = pair
    for kind, target in (("arp", "10.61.0.9"), ("nd", "fd61::9")):
        got = probe(a, kind, target)
        assert got["answered"] is False and got["detail"] == "no answer within 500 ms"


def test_another_mac_is_reported(pair: tuple[str, str, str]) -> None:
    a, b, mac = pair
    # the "guest" was planned with another MAC: B's answer itself is a stranger's frame
    got = probe(a, "arp", "10.61.0.2", "02:00:00:00:00:99")
    assert got["answered"] is True and got["strangers"] == [[mac, "frames"]]
    # a DHCP request from B while A waits for an answer nobody gives
    sender = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c",
         "import socket, time\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
         "for _ in range(20):\n"
         "    s.sendto(b'x' * 240, ('10.61.0.255', 67)); time.sleep(0.05)\n"],
    )  # fmt: skip
    try:
        got = probe(a, "arp", "10.61.0.9", "02:00:00:00:00:99")
    finally:
        sender.wait(10)
    assert got["answered"] is False and got["strangers"] == [[mac, "dhcp"]]


def test_without_net_raw_the_probe_names_the_capability(pair: tuple[str, str, str]) -> None:
    a, _, _ = pair
    got = probe(a, "arp", "10.61.0.2", "", "setpriv", "--bounding-set", "-net_raw", "--")
    assert got["answered"] is None
    assert "CAP_NET_RAW" in str(got["detail"]) and "NET_RAW" in str(got["detail"])

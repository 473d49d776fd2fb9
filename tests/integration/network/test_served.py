"""What ``virt-launcher plan`` prints is what the DHCPv4 server serves, option 121 included.

A real pod netns is wired from a real plan (the bridge binding, a plain subnet, a
Calico-style /32 behind 169.254.1.1 and a pod with an extra route); the NIC owner's
servers (``launcher.nics``, the run's code path) serve the plan's configuration on the
real bridge; a client in the guest netns sends a DISCOVER and a REQUEST without a
parameter request list (so the server sends every option it has) and prints the OFFER's
and the ACK's options. They must equal, byte for byte and in order, the ``served`` list
of the plan's JSON.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from launcher.network import PlanOptions, apply, discover, plan
from testbed.netns import Topology, nsrun, sh
from testbed.runner import build_spec

REPO = Path(__file__).resolve().parents[3]

SERVE = """
import asyncio, pickle, sys
from pathlib import Path
from launcher.nics import _make_servers

async def main():
    nic = pickle.loads(Path(sys.argv[1]).read_bytes())
    servers = [s for kind, s in _make_servers(nic, Path(sys.argv[2])) if kind == "dhcp4"]
    async with servers[0]:
        print("ready", flush=True)
        await servers[0].serve()

asyncio.run(main())
"""

CLIENT = """
import json, socket, sys
from dhcp.v4 import options as o
from dhcp.v4.codec import Message, parse

iface, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
sock.bind(("0.0.0.0", 68))
sock.settimeout(5)

def ask(kind, extra=()):
    msg = Message(op=1, xid=0x5E17, chaddr=mac, flags=0x8000,
                  options=((o.MESSAGE_TYPE, bytes([kind])), *extra))
    sock.sendto(msg.build(), ("255.255.255.255", 67))
    while True:
        reply = parse(sock.recv(4096))
        if reply.xid == 0x5E17 and reply.op == 2:
            return reply

offer = ask(o.DISCOVER)
server = offer.option(o.SERVER_ID)
ack = ask(o.REQUEST, ((o.REQUESTED_ADDRESS, offer.yiaddr.packed), (o.SERVER_ID, server)))
print(json.dumps({
    "offer": [[c, v.hex()] for c, v in offer.options],
    "ack": [[c, v.hex()] for c, v in ack.options],
    "yiaddr": str(ack.yiaddr),
}))
"""


def _served(nic_json: dict[str, Any]) -> list[list[object]]:
    return [[o["code"], o["hex"]] for o in nic_json["served"]["dhcp4"]]


@pytest.mark.parametrize("pod", ["plain", "calico32", "extra-route"])
def test_the_server_sends_exactly_what_the_plan_prints(
    topo: Topology, tmp_path: Path, pod: str
) -> None:
    topo.create(ipv6=False, calico32=pod == "calico32")
    if pod == "extra-route":
        sh("ip", "-n", topo.pod, "route", "add", "10.96.0.0/12", "via", "10.77.0.254")
    state = tmp_path / "state"
    p = plan(
        build_spec("bridge", 1, ""),
        discover(topo.pod, state),
        PlanOptions(stand_in_netns=topo.guest),
    )
    apply(p, state, netns=topo.pod)
    nic = p.nics[0]
    printed = json.loads(p.to_json())["nics"][0]  # what `virt-launcher plan` prints
    codes = [code for code, _ in _served(printed)]
    assert (121 in codes) == (pod != "plain"), codes
    (tmp_path / "nic.pickle").write_bytes(pickle.dumps(nic))
    argv = ["ip", "netns", "exec", topo.pod, sys.executable, "-c", textwrap.dedent(SERVE)]
    server = subprocess.Popen(
        [*argv, str(tmp_path / "nic.pickle"), str(state)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        guest_if, guest_mac = nic.tap.stand_in_peer, nic.device.mac
        assert guest_if is not None
        done = nsrun(topo.guest, sys.executable, "-c", textwrap.dedent(CLIENT), guest_if, guest_mac)
    finally:
        server.terminate()
        server.wait(timeout=10)
    got = json.loads(done.stdout)
    assert nic.dhcp4 is not None
    assert got["yiaddr"] == str(nic.dhcp4.leases[0].address.ip)
    assert got["ack"] == _served(printed)
    # the OFFER carries the same options; only the message type differs
    assert got["offer"][0] == [53, "02"] and got["offer"][1:] == got["ack"][1:]

"""Router advertisements and guest matching, checked with real tools in real namespaces.

``rdisc6`` (ndisc6) solicits and prints the advert it got; the client kernel
(``accept_ra=1``) installs and, after the final lifetime-0 advert on SIGTERM, removes
the default route; ``--ra-slaac`` makes the kernel autoconfigure from the prefix; and
a dhclient whose DUID carries no MAC (DUID-EN) is still matched by its frame's source
MAC through the server's AF_PACKET receive path. One ``python -m dhcp serve`` serves
udhcpc (v4) and dhclient -6 together, the server DUID survives restarts, and nothing
is served on another interface of the server namespace.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time

from dhcp.v6.codec import MsgType
from tests.integration.dhcp6.conftest import DNS6, GUEST_ADDR, MTU, SEARCH, V6Net, sh


def _rdisc6(v6: V6Net) -> str:
    res = sh("ip", "netns", "exec", v6.cns, "rdisc6", "-1", "-r", "3", "-w", "1500", v6.cif)
    return res.stdout


def _field(text: str, name: str) -> str:
    m = re.search(rf"^\s*{re.escape(name)}\s*:\s*(.+?)\s*$", text, re.MULTILINE)
    assert m, f"{name!r} missing from rdisc6 output:\n{text}"
    return m.group(1)


def test_rdisc6_sees_complete_advert(v6: V6Net) -> None:
    v6.serve("--ra-lifetime", "900")
    out = _rdisc6(v6)
    assert _field(out, "Stateful address conf.") == "Yes"
    assert _field(out, "Stateful other conf.") == "Yes"
    assert _field(out, "Router lifetime").startswith("900 ")
    assert _field(out, "MTU").startswith(f"{MTU} bytes")
    assert _field(out, "Prefix") == "fd00:d6::/64"
    assert _field(out, "On-link") == "Yes"
    assert _field(out, "Autonomous address conf.") == "No"
    assert _field(out, "Recursive DNS server") == DNS6
    assert _field(out, "DNS search list").split() == list(SEARCH)
    m = re.search(r"^\s*from (\S+)\s*$", out, re.MULTILINE)
    assert m and m.group(1) == v6.server_link_local(), out
    mac = sh("ip", "netns", "exec", v6.sns, "cat", f"/sys/class/net/{v6.sif}/address").stdout
    assert _field(out, "Source link-layer address").lower() == mac.strip()


def _default_gateways(v6: V6Net) -> list[object]:
    return [g for g, _dev in v6.client_state()["gateways"]]


def test_final_advert_removes_default_route(v6: V6Net) -> None:
    proc = v6.serve()
    ll = v6.server_link_local()
    deadline = time.monotonic() + 15
    while ll not in _default_gateways(v6) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ll in _default_gateways(v6), "the first unsolicited RA installed no default route"
    v6.stop(proc)
    assert proc.returncode == 0
    deadline = time.monotonic() + 5
    while ll in _default_gateways(v6) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ll not in _default_gateways(v6), "default route survived the final RA"


def test_slaac_mode_lets_the_kernel_autoconfigure(v6: V6Net) -> None:
    v6.serve(
        "--ra", "--ra-slaac", "--ra-prefix", "fd00:d6:1::/64", "--dns6", DNS6, default=False
    )  # fmt: skip
    out = _rdisc6(v6)
    assert _field(out, "Stateful address conf.") == "No"
    assert _field(out, "Stateful other conf.") == "Yes"
    assert _field(out, "Autonomous address conf.") == "Yes"
    deadline = time.monotonic() + 10
    addrs: list[str] = []
    while time.monotonic() < deadline:
        addrs = v6.client_state()["addresses"]
        if any(ipaddress.IPv6Address(a) in ipaddress.IPv6Network("fd00:d6:1::/64") for a in addrs):
            break
        time.sleep(0.1)
    assert any(ipaddress.IPv6Address(a) in ipaddress.IPv6Network("fd00:d6:1::/64") for a in addrs)


def test_duid_without_mac_is_matched_by_frame_source(v6: V6Net) -> None:
    """dhclient with a DUID-EN (no MAC inside) still gets the MAC-keyed lease."""
    v6.serve()
    leases = v6.tmp / "dhclient6.leases"
    # DUID-EN: type 2, enterprise 32473 (documentation), identifier 01020304.
    leases.write_text('default-duid "\\000\\002\\000\\000\\176\\331\\001\\002\\003\\004";\n')
    script = v6.tmp / "dhclient-script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    pidfile = v6.tmp / "dhclient.pid"
    v6.pidfiles.append(pidfile)
    subprocess.run(
        ["ip", "netns", "exec", v6.cns, "dhclient", "-6", "-1", "-sf", str(script),
         "-lf", str(leases), "-pf", str(pidfile), v6.cif],
        check=True, timeout=40, capture_output=True,
    )  # fmt: skip
    text = leases.read_text()
    assert "0:2:0:0:7e:d9:1:2:3:4" in text, text
    assert f"iaaddr {GUEST_ADDR}" in text, text


def test_v4_and_v6_served_together_by_one_process(v6: V6Net) -> None:
    """``python -m dhcp serve`` with --lease and --lease6: udhcpc and dhclient -6 both bind."""
    sh("ip", "-n", v6.sns, "addr", "add", "169.254.75.1/16", "dev", v6.sif)
    proc = v6.serve("--lease", f"{v6.mac}=10.0.2.2/24", "--router", "10.0.2.1")
    script = v6.tmp / "udhcpc.script"
    script.write_text(f'#!/bin/sh\necho "$1 ip=$ip router=$router" >> {v6.tmp}/udhcpc.log\n')
    script.chmod(0o755)
    sh("ip", "netns", "exec", v6.cns, "busybox", "udhcpc", "-i", v6.cif, "-f", "-q", "-n",
       "-t", "5", "-T", "1", "-s", str(script), timeout=30)  # fmt: skip
    assert "bound ip=10.0.2.2 router=10.0.2.1" in (v6.tmp / "udhcpc.log").read_text()
    leases = v6.tmp / "dhclient6.leases"
    noop = v6.tmp / "noop"
    noop.write_text("#!/bin/sh\n")
    noop.chmod(0o755)
    pidfile = v6.tmp / "dhclient.pid"
    v6.pidfiles.append(pidfile)
    sh("ip", "netns", "exec", v6.cns, "dhclient", "-6", "-1", "-sf", str(noop),
       "-lf", str(leases), "-pf", str(pidfile), v6.cif, timeout=40)  # fmt: skip
    assert f"iaaddr {GUEST_ADDR}" in leases.read_text()
    assert proc.poll() is None


def test_server_duid_survives_restart(v6: V6Net) -> None:
    """DUID-LL from the interface MAC by default; DUID-UUID kept in --server-duid-file."""
    state = v6.tmp / "server-duid"
    seen: list[str] = []
    for args in ((), (), ("--server-duid-file", str(state)), ("--server-duid-file", str(state))):
        proc = v6.serve(*args)
        log = (v6.tmp / f"server{len(v6.procs) - 1}.log").read_text()
        m = re.search(r"server DUID ([0-9a-f]+)", log)
        assert m, log
        seen.append(m.group(1))
        v6.stop(proc)
    mac = sh("ip", "netns", "exec", v6.sns, "cat", f"/sys/class/net/{v6.sif}/address").stdout
    assert seen[0] == seen[1] == "00030001" + mac.strip().replace(":", "")
    assert seen[2] == seen[3] and seen[2].startswith("0004") and len(seen[2]) == 36


_SOLICIT_PROBE = """
import socket, struct, sys
ifname, duid_hex = sys.argv[1], sys.argv[2]
duid = bytes.fromhex(duid_hex)
msg = b"\\x01\\x00\\x00\\x2a" + struct.pack("!HH", 1, len(duid)) + duid
msg += struct.pack("!HHIII", 3, 12, 1, 0, 0) + struct.pack("!HHH", 8, 2, 0)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 25, ifname.encode())
s.bind(("::", 546))
s.settimeout(2.0)
s.sendto(msg, ("ff02::1:2", 547, 0, socket.if_nametoindex(ifname)))
try:
    data = s.recv(2048)
except TimeoutError:
    print("silence")
else:
    print("answer", data[0])
"""


def test_nothing_is_served_on_other_interfaces(v6: V6Net) -> None:
    """A second link into the server netns, with the guest's own MAC: no RA, no DHCPv6."""
    other_s, other_c = f"d6x{v6.n}", f"d6y{v6.n}"
    sh("ip", "link", "add", other_s, "netns", v6.sns, "type", "veth",
       "peer", "name", other_c, "netns", v6.cns, "address", v6.mac)  # fmt: skip
    sh("ip", "-n", v6.sns, "link", "set", other_s, "up")
    sh("ip", "-n", v6.cns, "link", "set", other_c, "up")
    v6.serve()
    time.sleep(1.0)  # link-local addresses on the new pair (DAD is off)
    duid = "00030001" + v6.mac.replace(":", "")
    probe = [sys.executable, "-c", _SOLICIT_PROBE]
    other = sh("ip", "netns", "exec", v6.cns, *probe, other_c, duid).stdout.split()
    served = sh("ip", "netns", "exec", v6.cns, *probe, v6.cif, duid).stdout.split()
    assert other == ["silence"]
    assert served == ["answer", str(int(MsgType.ADVERTISE))]
    rd = sh("ip", "netns", "exec", v6.cns, "rdisc6", "-1", "-r", "2", "-w", "800", other_c,
            check=False)  # fmt: skip
    assert rd.returncode != 0 and "Stateful" not in rd.stdout, rd.stdout


def test_without_cap_net_raw_the_server_falls_back_to_duid_matching(v6: V6Net) -> None:
    """No AF_PACKET socket: dhclient's DUID-LL (it carries the MAC) still gets the lease;
    --ra then fails with a clear error instead of a traceback."""
    nocap = ("setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw", "--")
    v6.serve("--lease6", f"{v6.mac}={GUEST_ADDR}/64", default=False, wrap=nocap)
    log = (v6.tmp / "server0.log").read_text()
    assert "no CAP_NET_RAW" in log, log
    leases = v6.tmp / "dhclient6.leases"
    noop = v6.tmp / "noop"
    noop.write_text("#!/bin/sh\n")
    noop.chmod(0o755)
    pidfile = v6.tmp / "dhclient.pid"
    v6.pidfiles.append(pidfile)
    sh("ip", "netns", "exec", v6.cns, "dhclient", "-6", "-1", "-D", "LL", "-sf", str(noop),
       "-lf", str(leases), "-pf", str(pidfile), v6.cif, timeout=40)  # fmt: skip
    assert f"iaaddr {GUEST_ADDR}" in leases.read_text()
    proc = subprocess.run(
        ["ip", "netns", "exec", v6.sns, *nocap, sys.executable, "-m", "dhcp", "serve",
         "-i", v6.sif, "--ra", "--ra-prefix", "fd00:d6::/64"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "need CAP_NET_RAW" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

"""dhclient, dhcpcd, udhcpc and systemd-networkd get leases from `python -m dhcp serve`.

Each test runs the server in one netns and a client in another, then checks what the
client actually configured: ``ip -j addr``/``ip -j route``, the link MTU and the
resolv.conf (or lease dump) the client wrote to a per-test path. Clients run under
``unshare -u`` so a hostname option can never rename this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.dhcp4.conftest import SERVER_ADDRESS, Net, sh

ADDR = "10.244.1.5"
ROUTER = "10.244.1.1"
DNS = ("10.96.0.10", "10.96.0.11")
SEARCH = ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local")
MTU = 1400


def full_args(net: Net, prefix: int = 24, router: str = ROUTER) -> list[str]:
    return [
        "--lease",
        f"{net.mac}={ADDR}/{prefix},guest1",
        "--router",
        router,
        "--dns",
        *DNS,
        "--search",
        *SEARCH,
        "--domain",
        "cluster.local",
        "--mtu",
        str(MTU),
        "--server-address",
        SERVER_ADDRESS,
    ]


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ------------------------------------------------------------------ clients


def run_dhclient(net: Net, lease_file: Path | None = None) -> Path:
    """Debian's dhclient-script, with resolv.conf redirected to the test's folder."""
    resolv = net.tmp / "resolv.conf"
    resolv.write_text("")
    script = Path("/sbin/dhclient-script").read_text().replace("/etc/resolv.conf", str(resolv))
    script_path = _executable(net.tmp / "dhclient-script", script)
    lease = lease_file or net.tmp / "dhclient.leases"
    net.client(
        "unshare",
        "-u",
        "dhclient",
        "-1",
        "-v",
        "-lf",
        str(lease),
        "-pf",
        str(net.tmp / "dhclient.pid"),
        "-sf",
        str(script_path),
        net.cif,
        timeout=60,
    )
    return resolv


def run_udhcpc(net: Net, check: bool = True, iface: str | None = None) -> Path:
    """Debian's busybox default.script (resolv.conf redirected) behind an env recorder."""
    resolv = net.tmp / "resolv.conf"
    resolv.write_text("")
    script = (
        Path("/etc/udhcpc/default.script")
        .read_text()
        .replace('RESOLV_CONF="/etc/resolv.conf"', f'RESOLV_CONF="{resolv}"')
        .replace("/sbin/resolvconf", "/nonexistent/resolvconf")
    )
    inner = _executable(net.tmp / "udhcpc-default.script", script)
    wrapper = _executable(
        net.tmp / "udhcpc.script",
        f'#!/bin/sh\nenv > "{net.tmp}/udhcpc.$1.env"\nexec "{inner}" "$@"\n',
    )
    net.client(
        "unshare",
        "-u",
        "busybox",
        "udhcpc",
        "-i",
        iface or net.cif,
        "-n",
        "-q",
        "-f",
        "-t",
        "3",
        "-T",
        "2",
        "-s",
        str(wrapper),
        "-O",
        "search",
        "-O",
        "mtu",
        "-O",
        "staticroutes",
        "-x",
        "hostname:guest1",
        timeout=60,
        check=check,
    )
    return resolv


def udhcpc_env(net: Net) -> dict[str, str]:
    text = (net.tmp / "udhcpc.bound.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


DHCPCD_CONF = """\
option domain_name_servers, domain_name, domain_search, host_name
option classless_static_routes, interface_mtu
nohook resolv.conf, hostname, ntp.conf, timesyncd.conf, yp.conf
noipv6rs
ipv4only
"""


def run_dhcpcd(net: Net) -> dict[str, str]:
    """dhcpcd configures address, routes and MTU itself; DNS/search come from its lease dump.

    It stays running as a daemon (``-w`` returns once the address is configured) because
    dhcpcd 9 answers ``-U`` (dump the lease) only from a running daemon; the fixture
    kills it with the namespace.
    """
    conf = net.tmp / "dhcpcd.conf"
    conf.write_text(DHCPCD_CONF)
    net.client(
        "unshare",
        "-u",
        "dhcpcd",
        "-f",
        str(conf),
        "-4",
        "-w",
        "-t",
        "40",
        net.cif,
        timeout=90,
    )
    dump = net.client("dhcpcd", "-f", str(conf), "-4", "-U", net.cif).stdout
    values: dict[str, str] = {}
    for line in dump.splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip("'")
    return values


NETWORKD_UNIT = """\
[Match]
Name={iface}
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
[DHCPv4]
UseDNS=yes
UseDomains=yes
UseMTU=yes
UseHostname=no
"""

NETWORKD_RUN = """\
#!/bin/sh
set -e
mount --make-rprivate /
mount --bind {tmp}/network /etc/systemd/network
chown systemd-network:systemd-network {tmp}/netif
mount --bind {tmp}/netif /run/systemd/netif
mount -o remount,ro /sys
exec /lib/systemd/systemd-networkd
"""


def run_networkd(net: Net) -> dict[str, str]:
    """systemd-networkd in its own mount namespace: its config dir and /run/systemd/netif
    are per-test folders, /sys is read-only (so it does not wait for udev). Returns the
    state it wrote for the link (``links/IFINDEX``: DNS, DOMAINS) merged with its lease."""
    (net.tmp / "network").mkdir()
    (net.tmp / "netif").mkdir()
    (net.tmp / "network" / "10-d4.network").write_text(NETWORKD_UNIT.format(iface=net.cif))
    script = _executable(net.tmp / "networkd.sh", NETWORKD_RUN.format(tmp=net.tmp))
    log = (net.tmp / "networkd.log").open("w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", net.cns, "unshare", "-m", str(script)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    net.procs.append(proc)
    ifindex = json.loads(net.client("ip", "-j", "link", "show", "dev", net.cif).stdout)[0]
    links = net.tmp / "netif" / "links" / str(ifindex["ifindex"])
    lease = net.tmp / "netif" / "leases" / str(ifindex["ifindex"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if links.exists() and "OPER_STATE=routable" in links.read_text() and lease.exists():
            break
        if proc.poll() is not None:
            output = (net.tmp / "networkd.log").read_text()
            pytest.fail(f"systemd-networkd exited {proc.returncode}: {output}")
        time.sleep(0.2)
    else:
        pytest.fail(
            f"systemd-networkd got no lease in 30 s: {(net.tmp / 'networkd.log').read_text()}"
        )
    values: dict[str, str] = {}
    for path in (lease, links):
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
    return values


# ------------------------------------------------------------------ checks


def assert_configured(net: Net, prefix: int = 24, gateway: str = ROUTER) -> None:
    addrs = [(a["local"], a["prefixlen"]) for a in net.addrs()]
    assert (ADDR, prefix) in addrs, addrs
    defaults = [r for r in net.routes() if r["dst"] == "default"]
    assert [r["gateway"] for r in defaults] == [gateway], net.routes()


def assert_resolv(resolv: Path, search: bool = True) -> None:
    text = resolv.read_text()
    assert re.findall(r"^nameserver (\S+)", text, re.M) == list(DNS), text
    if search:
        lines = re.findall(r"^search (.+)$", text, re.M)
        # dhclient writes fully qualified names (trailing dot); both forms mean the same.
        assert lines and [d.rstrip(".") for d in lines[-1].split()] == list(SEARCH), text


# ------------------------------------------------------------------ tests


def test_dhclient_full_lease(net: Net) -> None:
    net.serve(*full_args(net))
    resolv = run_dhclient(net)
    assert_configured(net)
    assert net.mtu() == MTU
    assert_resolv(resolv)
    lease = (net.tmp / "dhclient.leases").read_text()
    assert 'option host-name "guest1";' in lease
    assert f"option dhcp-server-identifier {SERVER_ADDRESS};" in lease
    assert "option dhcp-lease-time 86400;" in lease
    kinds = [e["msg"] for e in net.server_log() if e["msg"].startswith("-->")]
    assert kinds[:2] == ["--> offer", "--> ack"], kinds


def test_dhcpcd_full_lease(net: Net) -> None:
    net.serve(*full_args(net))
    lease = run_dhcpcd(net)
    assert_configured(net)
    # dhcpcd 9 applies option 26 as the MTU of the routes it installs, not of the link.
    assert {r.get("metrics", [{}])[0].get("mtu") for r in net.routes()} == {MTU}, net.routes()
    assert lease["interface_mtu"] == str(MTU)
    assert lease["domain_name_servers"].split() == list(DNS), lease
    assert lease["domain_search"].split() == list(SEARCH), lease
    assert lease["host_name"] == "guest1"
    assert lease["dhcp_server_identifier"] == SERVER_ADDRESS


def test_udhcpc_full_lease(net: Net) -> None:
    net.serve(*full_args(net))
    resolv = run_udhcpc(net)
    assert_configured(net)
    assert net.mtu() == MTU
    # Debian's default.script writes nameservers and `domain` but never `search`:
    # check the search list udhcpc decoded from option 119 in the script's environment.
    assert_resolv(resolv, search=False)
    env = udhcpc_env(net)
    assert env["search"].split() == list(SEARCH), env
    assert env["mtu"] == str(MTU)
    assert env["serverid"] == SERVER_ADDRESS
    assert env["hostname"] == "guest1"


def test_systemd_networkd_full_lease(net: Net) -> None:
    net.serve(*full_args(net))
    state = run_networkd(net)
    assert_configured(net)
    assert net.mtu() == MTU
    assert state["DNS"].split() == list(DNS), state
    assert state["DOMAIN_SEARCH_LIST"].split() == list(SEARCH), state
    # networkd's resolver domains: option 15 first, then the option 119 list.
    assert state["DOMAINS"].split() == ["cluster.local", *SEARCH], state
    assert state["SERVER_ADDRESS"] == SERVER_ADDRESS


@pytest.mark.parametrize("client", ["dhclient", "dhcpcd", "udhcpc", "networkd"])
def test_calico_slash32_with_link_local_gateway(net: Net, client: str) -> None:
    """A /32 pod address reaches 169.254.1.1 through option 121's on-link host route."""
    gateway = "169.254.1.1"
    net.serve(*full_args(net, prefix=32, router=gateway))
    if client == "dhclient":
        run_dhclient(net)
    elif client == "dhcpcd":
        run_dhcpcd(net)
    elif client == "networkd":
        run_networkd(net)
    else:
        run_udhcpc(net)
    assert_configured(net, prefix=32, gateway=gateway)
    host_routes = [r for r in net.routes() if r["dst"] in (gateway, f"{gateway}/32")]
    if client == "udhcpc":
        # Debian's default.script ignores option 121 and adds `default via GW onlink`.
        assert any("onlink" in r.get("flags", []) for r in net.routes() if r["dst"] == "default")
    else:
        assert host_routes and "gateway" not in host_routes[0], net.routes()


def test_stale_address_gets_nak_then_correct_lease(net: Net) -> None:
    """dhclient init-reboots with a remembered 10.244.1.99: NAK, then DISCOVER → .5."""
    stale = net.tmp / "stale.leases"
    stale.write_text(
        f'lease {{\n  interface "{net.cif}";\n  fixed-address 10.244.1.99;\n'
        "  option subnet-mask 255.255.255.0;\n  option dhcp-lease-time 86400;\n"
        f"  option dhcp-server-identifier {SERVER_ADDRESS};\n"
        "  renew 4 2099/01/01 00:00:00;\n  rebind 4 2099/01/01 00:00:00;\n"
        "  expire 4 2099/01/01 00:00:00;\n}\n"
    )
    net.serve(*full_args(net))
    run_dhclient(net, lease_file=stale)
    assert_configured(net)
    assert "10.244.1.99" not in [a["local"] for a in net.addrs()]
    kinds = [e["msg"] for e in net.server_log() if e["msg"].startswith("-->")]
    assert kinds[0] == "--> nak", kinds
    assert "--> ack" in kinds[1:], kinds


def test_unknown_mac_gets_no_answer(net: Net) -> None:
    net.serve("--lease", f"02:d4:ff:ff:ff:ff={ADDR}/24", "--server-address", SERVER_ADDRESS)
    res = net.client(
        "busybox",
        "udhcpc",
        "-i",
        net.cif,
        "-n",
        "-q",
        "-f",
        "-t",
        "2",
        "-T",
        "1",
        "-s",
        "/bin/true",
        check=False,
    )
    assert res.returncode != 0
    assert net.addrs() == []
    ignored = [e for e in net.server_log() if e["msg"] == "<-- ignored"]
    assert ignored and all("no lease for MAC" in e["reason"] for e in ignored)
    assert not [e for e in net.server_log() if e["msg"].startswith("-->")]


def test_request_from_another_interface_gets_no_answer(net: Net) -> None:
    """A second veth into the server netns carries a leased MAC, but is not served."""
    other_s, other_c = f"d4t{net.n}", f"d4u{net.n}"
    other_mac = f"02:d4:00:01:{net.n:02x}:02"
    sh(
        "ip",
        "link",
        "add",
        other_s,
        "netns",
        net.sns,
        "type",
        "veth",
        "peer",
        "name",
        other_c,
        "netns",
        net.cns,
    )
    sh("ip", "-n", net.sns, "link", "set", other_s, "up")
    sh("ip", "-n", net.sns, "addr", "add", "169.254.76.1/16", "dev", other_s)
    sh("ip", "-n", net.cns, "link", "set", other_c, "address", other_mac, "up")
    net.serve(
        "--lease",
        f"{other_mac}={ADDR}/24",
        "--lease",
        f"{net.mac}=10.244.1.6/24",
        "--server-address",
        SERVER_ADDRESS,
    )
    res = net.client(
        "busybox",
        "udhcpc",
        "-i",
        other_c,
        "-n",
        "-q",
        "-f",
        "-t",
        "2",
        "-T",
        "1",
        "-s",
        "/bin/true",
        check=False,
    )
    assert res.returncode != 0
    assert not [e for e in net.server_log() if e["msg"].startswith(("-->", "<--"))]
    # The served interface still works, so the silence above is the binding, not a dead server.
    run_udhcpc(net)
    assert "10.244.1.6" in [a["local"] for a in net.addrs()]


def test_sigterm_and_sigint_exit_zero(net: Net) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = net.serve(*full_args(net))
        # `ip netns exec` execs the python process, so the signal reaches the server.
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=10) == 0
        assert shutil.which("ip")


@pytest.mark.parametrize("allow", [False, True])
def test_relayed_requests_only_with_allow_relay(net: Net, allow: bool) -> None:
    """perfdhcp sent to the server's unicast address acts as a relay (giaddr = its address)."""
    net.client("ip", "addr", "add", "169.254.75.2/16", "dev", net.cif)
    args = ["--pool", "169.254.100.10-169.254.100.20/16", "--server-address", SERVER_ADDRESS]
    net.serve(*args, *(["--allow-relay"] if allow else []))
    res = net.client(
        "perfdhcp",
        "-4",
        "-n",
        "3",
        "-r",
        "10",
        "-R",
        "3",
        "-W",
        "2000000",  # wait 2 s for the last replies before exiting
        "-l",
        net.cif,
        SERVER_ADDRESS,
        timeout=30,
        check=False,
    )
    if allow:
        assert res.returncode == 0, res.stdout
        assert len([e for e in net.server_log() if e["msg"] == "--> ack"]) == 3
    else:
        assert res.returncode == 3, res.stdout  # exchanges not completed
        ignored = [e for e in net.server_log() if e["msg"] == "<-- ignored"]
        assert ignored and all("relay" in e["reason"] for e in ignored)


def test_renewal_ack_reaches_client_without_a_route_and_release_is_recorded(net: Net) -> None:
    """udhcpc renews on SIGUSR1 (unicast REQUEST with ciaddr) and releases on SIGUSR2.

    The server netns has no route to 10.244.1.0/24 — like a pod whose address moved to
    the guest — so the ACK must go to ciaddr at chaddr, not through the routing table.
    """
    import signal

    net.serve(*full_args(net))
    resolv = net.tmp / "resolv.conf"
    resolv.write_text("")
    wrapper = _executable(
        net.tmp / "udhcpc.script",
        # Configure first, then record: the test renews as soon as the record appears.
        "#!/bin/sh\ncase $1 in bound) busybox ifconfig $interface $ip netmask $subnet ;; esac\n"
        f'env > "{net.tmp}/udhcpc.$1.env.tmp" && mv "{net.tmp}/udhcpc.$1.env.tmp" '
        f'"{net.tmp}/udhcpc.$1.env"\n',
    )
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            net.cns,
            "busybox",
            "udhcpc",
            "-i",
            net.cif,
            "-f",
            "-t",
            "3",
            "-T",
            "2",
            "-s",
            str(wrapper),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    net.procs.append(proc)

    def wait_for(path: Path) -> None:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert time.monotonic() < deadline, f"{path.name} never appeared"
            time.sleep(0.1)

    wait_for(net.tmp / "udhcpc.bound.env")
    os.kill(proc.pid, signal.SIGUSR1)
    wait_for(net.tmp / "udhcpc.renew.env")
    renew = dict(
        line.split("=", 1)
        for line in (net.tmp / "udhcpc.renew.env").read_text().splitlines()
        if "=" in line
    )
    assert renew["ip"] == ADDR
    acks = [e for e in net.server_log() if e["msg"] == "--> ack"]
    # busybox sends the unicast renew from a short-lived socket and opens its listening
    # socket afterwards, so an ACK arriving within a millisecond is sometimes missed and
    # udhcpc retransmits 2 s later (seen with tcpdump: the first ACK is on the wire).
    reasons = [a["reason"] for a in acks]
    assert reasons[0] == "selecting" and 1 <= len(reasons) - 1 <= 2, acks
    assert set(reasons[1:]) == {"renewing/rebinding"}, acks
    assert not [e for e in net.server_log() if e["msg"] == "DHCPv4 reply could not be sent"]
    os.kill(proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not [e for e in net.server_log() if e["msg"] == "--> release"]:
        assert time.monotonic() < deadline, "no RELEASE recorded"
        time.sleep(0.1)


def test_two_servers_on_two_interfaces_of_one_netns(net: Net) -> None:
    """One server per guest NIC (the launcher's layout): each answers only its own link."""
    second_s, second_c = f"d4t{net.n}", f"d4u{net.n}"
    second_mac = f"02:d4:00:01:{net.n:02x}:02"
    sh(
        "ip",
        "link",
        "add",
        second_s,
        "netns",
        net.sns,
        "type",
        "veth",
        "peer",
        "name",
        second_c,
        "netns",
        net.cns,
    )
    sh("ip", "-n", net.sns, "link", "set", second_s, "up")
    sh("ip", "-n", net.sns, "addr", "add", "169.254.76.1/16", "dev", second_s)
    sh("ip", "-n", net.cns, "link", "set", second_c, "address", second_mac, "up")
    # Both servers know both MACs, so only the interface binding decides who answers.
    leases = ["--lease", f"{net.mac}=10.244.1.5/24", "--lease", f"{second_mac}=10.244.2.5/24"]
    net.serve(*leases, "--server-address", SERVER_ADDRESS)
    net.serve(*leases, "--server-address", "169.254.76.1", interface=second_s)
    for iface, serverid in ((net.cif, SERVER_ADDRESS), (second_c, "169.254.76.1")):
        env_file = net.tmp / f"{iface}.env"
        script = _executable(net.tmp / f"{iface}.sh", f'#!/bin/sh\nenv > "{env_file}"\n')
        net.client(
            "busybox",
            "udhcpc",
            "-i",
            iface,
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "2",
            "-s",
            str(script),
            timeout=30,
        )
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        assert env["serverid"] == serverid, env
    first = [e for e in net.server_log(0) if e["msg"].startswith("-->")]
    second = [e for e in net.server_log(1) if e["msg"].startswith("-->")]
    assert {e["mac"] for e in first} == {net.mac}
    assert {e["mac"] for e in second} == {second_mac}
    assert {e["address"] for e in second} == {"10.244.2.5"}


def test_dhcpcd_inform_gets_configuration_without_lease(net: Net) -> None:
    """``dhcpcd --inform ADDR/PREFIX``: the client keeps its address, asks only for options."""
    net.serve(*full_args(net))
    conf = net.tmp / "dhcpcd.conf"
    conf.write_text(DHCPCD_CONF)
    net.client("ip", "addr", "add", f"{ADDR}/24", "dev", net.cif)  # configured by a "3rd party"
    net.client(
        "unshare",
        "-u",
        "dhcpcd",
        "-f",
        str(conf),
        "-4",
        "-w",
        "-t",
        "40",
        f"--inform={ADDR}/24",
        net.cif,
        timeout=90,
    )
    dump = net.client("dhcpcd", "-f", str(conf), "-4", "-U", net.cif).stdout
    values = dict(line.partition("=")[::2] for line in dump.splitlines())
    values = {k: v.strip("'") for k, v in values.items()}
    assert values["domain_name_servers"].split() == list(DNS), values
    assert values["domain_search"].split() == list(SEARCH), values
    assert values["reason"] == "INFORM" and "dhcp_lease_time" not in values, values
    events = [e for e in net.server_log() if e["msg"].startswith("-->")]
    assert [e["msg"] for e in events] == ["--> inform"], events


def test_server_on_a_bridge_like_the_bridge_binding(net: Net) -> None:
    """The real layout: the server address sits on a bridge, the guest's link is a port."""
    bridge = f"d4b{net.n}"
    sh("ip", "-n", net.sns, "addr", "flush", "dev", net.sif)
    sh("ip", "-n", net.sns, "link", "add", bridge, "type", "bridge")
    sh("ip", "-n", net.sns, "link", "set", net.sif, "master", bridge)
    sh("ip", "-n", net.sns, "link", "set", bridge, "up")
    sh("ip", "-n", net.sns, "addr", "add", f"{SERVER_ADDRESS}/16", "dev", bridge)
    net.serve(*full_args(net), interface=bridge)
    run_udhcpc(net)
    assert_configured(net)
    assert udhcpc_env(net)["serverid"] == SERVER_ADDRESS

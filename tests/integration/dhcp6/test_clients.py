"""Real DHCPv6 clients get a complete IPv6 setup from ``python -m dhcp serve`` alone.

For each client (ISC dhclient -6, dhcpcd, wide-dhcpv6 dhcp6c, busybox udhcpc6,
systemd-networkd) the test checks what the client actually configured: the guest
address and a default route through the server's link-local address in the client
namespace's kernel (``ip -j -6``), and DNS servers and search list in the files the
client (or its script) wrote into the per-test directory. Nothing on the host changes
except the clients' own DUID files under /var/lib.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.dhcp6.conftest import DNS6, GUEST_ADDR, SEARCH, V6Net

# Records the environment a client passes to its script, then applies address and
# resolv.conf the way distro scripts do (resolv.conf into the per-test dir).
_ENV_HOOK = """#!/bin/sh
env | sort >> {tmp}/env.log
echo ---- >> {tmp}/env.log
"""


def _assert_complete(
    v6: V6Net, state: dict[str, object], dns: list[str], search: list[str]
) -> None:
    ll = v6.server_link_local()
    assert GUEST_ADDR in state["addresses"], state  # type: ignore[operator]
    assert (ll, v6.cif) in state["gateways"], (ll, state)  # type: ignore[operator]
    assert [str(ipaddress.IPv6Address(d)) for d in dns] == [DNS6], dns
    assert [s.rstrip(".") for s in search] == list(SEARCH), search


def _resolv(path: Path) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    search: list[str] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"]:
            dns.append(parts[1])
        elif parts[:1] == ["search"]:
            search += parts[1:]
    return dns, search


def _env_value(log: Path, name: str) -> str:
    matches = re.findall(rf"^{name}=(.*)$", log.read_text(), re.MULTILINE)
    assert matches, f"{name} never reached the client script: {log.read_text()[-1500:]}"
    return matches[-1].strip()


def test_dhclient(v6: V6Net) -> None:
    """ISC dhclient -6 with Debian's own dhclient-script (resolv.conf redirected)."""
    v6.serve()
    script = v6.tmp / "dhclient-script"
    resolv = v6.tmp / "resolv.conf"
    script.write_text(
        Path("/sbin/dhclient-script").read_text().replace("/etc/resolv.conf", str(resolv))
    )
    script.chmod(0o755)
    pidfile = v6.tmp / "dhclient.pid"
    v6.pidfiles.append(pidfile)
    subprocess.run(
        ["ip", "netns", "exec", v6.cns, "dhclient", "-6", "-1", "-sf", str(script),
         "-lf", str(v6.tmp / "dhclient6.leases"), "-pf", str(pidfile), v6.cif],
        check=True, timeout=40, capture_output=True,
    )  # fmt: skip
    state = v6.wait_configured()
    dns, search = _resolv(resolv)
    _assert_complete(v6, state, dns, search)
    lease = (v6.tmp / "dhclient6.leases").read_text()
    assert f"iaaddr {GUEST_ADDR}" in lease


def test_dhcpcd(v6: V6Net) -> None:
    """dhcpcd: router solicitation, M flag → DHCPv6 (rapid commit), its own routes."""
    v6.serve()
    conf = v6.tmp / "dhcpcd.conf"
    conf.write_text(
        "ipv6only\nipv6rs\noption rapid_commit\n"
        "option domain_name_servers, domain_search\nnohook resolv.conf\n"
    )
    hook = v6.tmp / "hook.sh"
    hook.write_text(_ENV_HOOK.format(tmp=v6.tmp))
    hook.chmod(0o755)
    v6.spawn("dhcpcd", "-6", "-B", "-f", str(conf), "-c", str(hook), v6.cif, log="dhcpcd.log")
    state = v6.wait_configured()
    env = v6.tmp / "env.log"
    _assert_complete(
        v6,
        state,
        _env_value(env, "new_dhcp6_name_servers").split(),
        _env_value(env, "new_dhcp6_domain_search").split(),
    )
    assert _env_value(env, "nd1_flags") == "MO"
    assert _env_value(env, "new_dhcp6_rapid_commit") == ""


def test_wide_dhcp6c(v6: V6Net) -> None:
    """wide-dhcpv6 dhcp6c: IA_NA from DHCPv6, default route from the kernel's RA."""
    v6.serve()
    hook = v6.tmp / "hook.sh"
    resolv = v6.tmp / "resolv.conf"
    hook.write_text(
        _ENV_HOOK.format(tmp=v6.tmp)
        + f'{{ for s in $new_domain_name_servers; do echo "nameserver $s"; done\n'
        f'  echo "search $new_domain_name"; }} > {resolv}\n'
    )
    hook.chmod(0o755)
    conf = v6.tmp / "dhcp6c.conf"
    conf.write_text(
        f"interface {v6.cif} {{\n  send ia-na 0;\n  send rapid-commit;\n"
        f"  request domain-name-servers;\n  request domain-name;\n"
        f'  script "{hook}";\n}};\nid-assoc na 0 {{ }};\n'
    )
    v6.spawn(
        "dhcp6c", "-f", "-c", str(conf), "-p", str(v6.tmp / "dhcp6c.pid"), v6.cif,
        log="dhcp6c.log",
    )  # fmt: skip
    state = v6.wait_configured()
    for _ in range(50):
        if resolv.exists() and "search" in resolv.read_text():
            break
        time.sleep(0.1)
    dns, search = _resolv(resolv)
    _assert_complete(v6, state, dns, search)


def _busybox() -> Path:
    from testbed.guest.build import ensure_busybox

    return ensure_busybox()


def test_udhcpc6(v6: V6Net) -> None:
    """busybox udhcpc6 (static build with CONFIG_UDHCPC6=y from testbed/guest/build.py)."""
    busybox = _busybox()
    v6.serve()
    script = v6.tmp / "udhcpc6.script"
    resolv = v6.tmp / "resolv.conf"
    script.write_text(
        _ENV_HOOK.format(tmp=v6.tmp) + 'case "$1" in bound|renew)\n'
        '  ip -6 addr replace "$ipv6/128" dev "$interface"\n'
        f'  {{ for s in $dns; do echo "nameserver $s"; done; echo "search $search"; }} > {resolv}\n'
        ";;\nesac\n"
    )
    script.chmod(0o755)
    proc = v6.spawn(
        str(busybox), "udhcpc6", "-f", "-q", "-n", "-t", "5", "-T", "1", "-i", v6.cif,
        "-s", str(script), "-O", "dns", "-O", "search", log="udhcpc6.log",
    )  # fmt: skip
    proc.wait(timeout=30)
    state = v6.wait_configured()
    dns, search = _resolv(resolv)
    _assert_complete(v6, state, dns, search)


def test_systemd_networkd(v6: V6Net) -> None:
    """systemd-networkd in its own mount namespace (/sys read-only, private /run)."""
    networkd = Path("/lib/systemd/systemd-networkd")
    if not networkd.exists():
        pytest.fail("systemd-networkd is missing: apt-get install systemd (scripts/install.sh)")
    v6.serve()
    conf = v6.tmp / "network"
    conf.mkdir()
    (conf / "10-guest.network").write_text(
        f"[Match]\nName={v6.cif}\n\n[Network]\nDHCP=ipv6\nIPv6AcceptRA=yes\n"
        "LinkLocalAddressing=ipv6\n\n[DHCPv6]\nUseDNS=yes\nUseDomains=yes\n"
        "\n[IPv6AcceptRA]\nUseDNS=yes\nUseDomains=yes\n"
    )
    run = v6.tmp / "run"
    run.mkdir()
    inner = (
        "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /run; "
        f"mkdir -p /run/systemd/network /run/systemd/netif; cp {conf}/* /run/systemd/network/; "
        "mount -o remount,ro,bind /sys 2>/dev/null || mount -t sysfs -o ro sysfs /sys; "
        f"chown -R systemd-network: /run/systemd/netif 2>/dev/null || true; "
        f"(while sleep 0.5; do cp -r /run/systemd/netif {run}/ 2>/dev/null; done) & "
        f"exec {networkd}"
    )
    v6.spawn("unshare", "-m", "sh", "-c", inner, log="networkd.log")
    state = v6.wait_configured(timeout=40)
    link_state = None
    for _ in range(100):
        files = list((run / "netif" / "links").glob("*")) if (run / "netif").exists() else []
        for f in files:
            text = f.read_text()
            if re.search(r"^DNS=\S", text, re.M) and re.search(r"^DOMAINS=\S", text, re.M):
                link_state = text
        if link_state:
            break
        time.sleep(0.2)
    assert link_state is not None, (v6.tmp / "networkd.log").read_text()[-2000:]
    dns = re.findall(r"^DNS=(.*)$", link_state, re.MULTILINE)[0].split()
    search = re.findall(r"^DOMAINS=(.*)$", link_state, re.MULTILINE)[0].split()
    # networkd merges what DHCPv6 (options 23/24) and the RA (RDNSS/DNSSL) gave it.
    _assert_complete(v6, state, list(dict.fromkeys(dns)), list(dict.fromkeys(search)))


def test_tools_present() -> None:
    """The clients above are installed (scripts/install.sh); CI must fail without them."""
    missing = [c for c in ("dhclient", "dhcpcd", "dhcp6c", "rdisc6") if not shutil.which(c)]
    assert not missing, f"missing DHCPv6 test clients: {missing}"
    assert os.geteuid() == 0

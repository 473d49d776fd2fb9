"""names, resolv.conf parsing, PodLink JSON (the records: test_transaction.py)."""

from __future__ import annotations

import json

import pytest

from launcher.errors import NetworkError
from launcher.network.discover import link_from_json, link_to_json
from launcher.network.names import bridge_name, derived_mac, stand_in_peer_name, tap_name
from launcher.network.resolv import parse_resolv_conf

from .helpers import pod_link


def test_generated_names_fit_ifnamsiz() -> None:
    for i in (0, 9, 99, 9999):
        assert len(bridge_name(i)) <= 15 and len(tap_name(i)) <= 15
        assert len(stand_in_peer_name(i)) <= 15
    with pytest.raises(NetworkError, match="is not 1-15 characters"):
        tap_name(10**12)


def test_derived_mac_is_stable_local_unicast_and_avoids() -> None:
    a = derived_mac("seed")
    assert a == derived_mac("seed") and a != derived_mac("other")
    first = int(a[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert derived_mac("seed", avoid=a) != a


def test_parse_resolv_conf() -> None:
    text = """# kubelet
nameserver 10.96.0.10
nameserver fd00:10:96::a%eth0
nameserver bogus
nameserver 10.96.0.10
search ns.svc.cluster.local svc.cluster.local cluster.local.
options ndots:5
"""
    r = parse_resolv_conf(text)
    assert [str(a) for a in r.nameservers] == ["10.96.0.10", "fd00:10:96::a"]
    assert [str(a) for a in r.nameservers4] == ["10.96.0.10"]
    assert r.search == ("ns.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert parse_resolv_conf("").nameservers == ()


def test_pod_link_json_roundtrip() -> None:
    link = pod_link()
    restored = link_from_json(json.loads(json.dumps(link_to_json(link))))
    assert restored == link and restored.restored


def test_sysctl_path_keeps_dotted_interface_names() -> None:
    from launcher.network.sysctl import Sysctl

    assert str(Sysctl("net.ipv4.ip_forward", "1").path) == "/proc/sys/net/ipv4/ip_forward"
    assert (
        str(Sysctl("net.ipv4.conf.eth0.100.arp_ignore", "1").path)
        == "/proc/sys/net/ipv4/conf/eth0.100/arp_ignore"
    )
    assert str(Sysctl("net.ipv6.conf.all.forwarding", "1").path).endswith("conf/all/forwarding")

"""The status endpoint's link counters and neighbours (launcher.network.linkstats), checked
against iproute2's own reading of the same netns (``ip -s -j link``, ``ip -j neigh``).

Root: a pod/peer topology with traffic between them, so counters and neighbour entries
exist; the reader opens its socket in the named netns like the tests' launchers do.
"""

from __future__ import annotations

import json

import pytest

from launcher.errors import NetworkError
from launcher.network.linkstats import LinkReader
from testbed.netns import PEER4, PEER6, Topology, nsrun


def ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    out = nsrun(ns, "ip", "-j", *args).stdout
    return list(json.loads(out)) if out.strip() else []


def test_links_and_neighbours_match_iproute2(topo: Topology) -> None:
    topo.create()
    for peer in (PEER4.split("/")[0], PEER6.split("/")[0]):
        nsrun(topo.pod, "ping", "-c", "3", "-i", "0.2", "-W", "2", peer, timeout=20)
    reader = LinkReader(topo.pod)
    try:
        counters = reader.links(None)
        neighbours = reader.neighbours(["eth0"])
        only = reader.links(["eth0", "no-such-link"])
    finally:
        reader.close()
    listed = ip_json(topo.pod, "-s", "link", "show")
    assert sorted(counters) == sorted(str(lk["ifname"]) for lk in listed)
    for lk in listed:
        got = counters[str(lk["ifname"])]
        stats = lk["stats64"]
        assert isinstance(stats, dict)
        assert got.mtu == lk["mtu"] and got.mac == lk.get("address", "")
        assert got.oper_state == str(lk["operstate"]).lower()
        # the reader dumped before ip did: counters can only have grown since
        assert 0 < got.rx_packets <= stats["rx"]["packets"] or lk["ifname"] == "lo"
        assert got.rx_bytes <= stats["rx"]["bytes"] and got.tx_bytes <= stats["tx"]["bytes"]
        assert got.rx_errors == stats["rx"]["errors"] and got.tx_dropped == stats["tx"]["dropped"]
    assert counters["eth0"].tx_packets >= 6 and counters["eth0"].rx_bytes > 0
    assert sorted(only) == ["eth0"]
    seen = {
        (str(n["dst"]), str(n["lladdr"]))
        for n in ip_json(topo.pod, "neigh", "show", "dev", "eth0")
        if "lladdr" in n and "FAILED" not in n.get("state", [])  # type: ignore[operator]
    }
    assert {(n.address, n.mac) for n in neighbours} == seen
    assert {n.address for n in neighbours} >= {PEER4.split("/")[0], PEER6.split("/")[0]}
    assert all(n.interface == "eth0" for n in neighbours)


def test_a_missing_netns_is_a_network_error() -> None:
    with pytest.raises(NetworkError, match="no-such-netns"):
        LinkReader("no-such-netns").links(None)

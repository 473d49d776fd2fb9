"""libnftables in-process (launcher.network.nftables), checked against the ``nft`` command.

Root: each test makes its own netns (the host's ruleset is never touched). The launcher
loads, lists and deletes its tables through the library; the real ``nft`` binary reads
them back. A context is closed on another thread, and not before a ``deferred_close``
block ends (closing it earlier stalls link changes in that netns, docs/network.md): the
process's nf_tables netlink sockets are counted in /proc to show both.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.errors import NetworkError
from launcher.network import nftables
from launcher.network.names import NFT_TABLE
from testbed.harness import sh

REPO = Path(__file__).resolve().parents[3]
DOC = nftables.render(
    [
        nftables.NftFragment(
            bridge_prerouting=('iifname "vltap0" ether saddr != 02:00:00:00:00:01 drop',),
            postrouting=('oifname "eth0" ip saddr 10.0.2.2 masquerade',),
        )
    ]
)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nft-lib-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def nft_cli(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, "nft", *args, check=False)


def test_load_list_delete_as_nft_sees_them(netns: str) -> None:
    nftables.apply_ruleset(DOC, netns)
    bridge = nft_cli(netns, "list", "table", "bridge", NFT_TABLE)
    assert bridge.returncode == 0 and "02:00:00:00:00:01" in bridge.stdout
    inet = nft_cli(netns, "list", "table", "inet", NFT_TABLE)
    assert "masquerade" in inet.stdout
    listed = nftables.list_tables(netns)
    assert listed == inet.stdout + bridge.stdout
    nftables.apply_ruleset(DOC, netns)  # loading it again replaces, does not add
    assert nft_cli(netns, "list", "table", "bridge", NFT_TABLE).stdout == bridge.stdout
    nftables.delete_tables(netns)
    assert nft_cli(netns, "list", "tables").stdout == ""
    assert nftables.list_tables(netns) == ""
    nftables.delete_tables(netns)  # no tables: still fine


def test_a_refused_document_names_nft_error_and_changes_nothing(netns: str) -> None:
    nftables.apply_ruleset(DOC, netns)
    before = nft_cli(netns, "list", "ruleset").stdout
    bad = DOC.replace("masquerade", "masquerade to nowhere", 1)
    with pytest.raises(NetworkError) as err:
        nftables.apply_ruleset(bad, netns)
    assert "nft loading the ruleset failed" in str(err.value)
    assert "Error:" in str(err.value) and "to nowhere" in str(err.value)  # the right line
    assert nft_cli(netns, "list", "ruleset").stdout == before  # one transaction


CHECK = textwrap.dedent(
    """
    import json, os, sys, time
    from launcher.network import nftables

    def nfnetlink_sockets():
        ours = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                ours.add(target[8:-1])
        rows = open("/proc/self/net/netlink").read().splitlines()[1:]
        return sum(1 for r in rows if r.split()[1] == "12" and r.split()[-1] in ours)

    def settled(limit=5.0):
        deadline = time.monotonic() + limit
        while nfnetlink_sockets() and time.monotonic() < deadline:
            time.sleep(0.01)
        return nfnetlink_sockets()

    doc = sys.stdin.read()
    out = {"before": nfnetlink_sockets()}
    with nftables.deferred_close():
        nftables.apply_ruleset(doc)
        nftables.list_tables()
        time.sleep(0.2)
        out["inside"] = nfnetlink_sockets()
    out["after"] = settled()
    nftables.apply_ruleset(doc)
    out["unblocked"] = settled()
    print(json.dumps(out))
    """
)


def test_contexts_close_after_the_block_on_another_thread(netns: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CHECK],
        input=DOC,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    # three contexts kept open inside the block (load + two lists), none left after it
    assert counts == {"before": 0, "inside": 3, "after": 0, "unblocked": 0}

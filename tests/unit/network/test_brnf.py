"""br_netfilter detection for the masquerade hairpin warning (launcher.network.brnf)."""

from __future__ import annotations

from pathlib import Path

from launcher.network.brnf import hairpin_blockers


def tree(root: Path, **values: str) -> Path:
    bridge = root / "net" / "bridge"
    bridge.mkdir(parents=True)
    for name, value in values.items():
        (bridge / name.replace("_", "-")).write_text(value + "\n")
    return root


def test_both_on(tmp_path: Path) -> None:
    root = tree(tmp_path, bridge_nf_call_iptables="1", bridge_nf_call_ip6tables="1")
    assert hairpin_blockers(root) == [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ]


def test_off_or_not_loaded(tmp_path: Path) -> None:
    assert hairpin_blockers(tmp_path) == []  # br_netfilter not loaded: no files
    root = tree(tmp_path / "off", bridge_nf_call_iptables="0", bridge_nf_call_ip6tables="1")
    assert hairpin_blockers(root) == ["net.bridge.bridge-nf-call-ip6tables"]


def test_real_proc_answers_a_list() -> None:
    assert set(hairpin_blockers()) <= {
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    }

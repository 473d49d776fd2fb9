"""The launcher's nftables ruleset: fragments from the bindings, rendered and applied whole.

Bindings contribute :class:`NftFragment` rule lines while planning; ``render`` turns all
of them into ONE ``nft -f`` document that (re)creates the launcher's two tables —
``inet virt_launcher`` (NAT for masquerade) and ``bridge virt_launcher`` (DHCP/RA
containment and anti-spoofing on the bridge ports) — and ``apply_ruleset`` loads it in
one transaction (nft applies a whole file atomically). The document starts by creating
and deleting each table, so loading it again replaces the tables instead of adding
duplicates. Called by ``plan`` (render) and ``apply``/``cleanup``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from launcher.errors import NetworkError

from .names import NFT_TABLE
from .netlink import run_in_netns

__all__ = [
    "NftFragment",
    "apply_ruleset",
    "delete_tables",
    "list_tables",
    "nft_binary",
    "reload_document",
    "render",
]

log = logging.getLogger(__name__)
NFT_TIMEOUT_S = 30
_FALLBACK = "/usr/sbin/nft"


@dataclass(frozen=True, slots=True)
class NftFragment:
    """Rule lines one guest NIC adds to the launcher's chains (nft syntax, one rule a line)."""

    inet_sets: tuple[str, ...] = ()  # whole ``set name { … }`` blocks
    prerouting: tuple[str, ...] = ()  # inet nat, priority dstnat
    output: tuple[str, ...] = ()  # inet nat output, priority dstnat (loopback DNAT)
    postrouting: tuple[str, ...] = ()  # inet nat, priority srcnat
    bridge_prerouting: tuple[str, ...] = ()  # bridge filter: frames entering a port
    bridge_postrouting: tuple[str, ...] = ()  # bridge filter: frames leaving a port


def _chain(name: str, hook: str, kind: str, priority: str, rules: Sequence[str]) -> list[str]:
    lines = [
        f"\tchain {name} {{",
        f"\t\ttype {kind} hook {hook} priority {priority}; policy accept;",
    ]
    lines += [f"\t\t{rule}" for rule in rules]
    lines.append("\t}")
    return lines


def render(fragments: Iterable[NftFragment]) -> str:
    """The whole nft document for these fragments ('' when they add no rule)."""
    frags = list(fragments)

    def gather(attr: str) -> list[str]:
        return [line for f in frags for line in getattr(f, attr)]

    inet_sets = gather("inet_sets")
    nat = {a: gather(a) for a in ("prerouting", "output", "postrouting")}
    br = {a: gather(a) for a in ("bridge_prerouting", "bridge_postrouting")}
    out: list[str] = []
    if inet_sets or any(nat.values()):
        out += [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
        out.append(f"table inet {NFT_TABLE} {{")
        out += [f"\t{line}" for line in inet_sets]
        out += _chain("prerouting", "prerouting", "nat", "dstnat", nat["prerouting"])
        out += _chain("output", "output", "nat", "-100", nat["output"])
        out += _chain("postrouting", "postrouting", "nat", "srcnat", nat["postrouting"])
        out.append("}")
    if any(br.values()):
        out += [f"table bridge {NFT_TABLE}", f"delete table bridge {NFT_TABLE}"]
        out.append(f"table bridge {NFT_TABLE} {{")
        out += _chain("prerouting", "prerouting", "filter", "-300", br["bridge_prerouting"])
        out += _chain("postrouting", "postrouting", "filter", "300", br["bridge_postrouting"])
        out.append("}")
    return "\n".join(out) + "\n" if out else ""


def nft_binary() -> str | None:
    """The nft executable the launcher runs (PATH, else /usr/sbin/nft), None if there is none."""
    found = shutil.which("nft")
    if found:
        return found
    return _FALLBACK if os.access(_FALLBACK, os.X_OK) else None


def _nft(args: list[str], stdin: str | None, netns: str | None) -> str:
    nft = nft_binary()
    if nft is None:
        raise NetworkError(
            f"nft (nftables) is not installed: neither on PATH nor at {_FALLBACK}; the "
            "launcher's image must contain it"
        )

    def run() -> str:
        try:
            done = subprocess.run(
                [nft, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NetworkError(f"cannot run {nft} {' '.join(args)}: {err}") from err
        if done.returncode != 0:
            raise NetworkError(
                f"nft {' '.join(args)} failed with exit {done.returncode}: "
                f"{done.stderr.strip()[:800]}"
            )
        return done.stdout

    return run_in_netns(netns, run)


def apply_ruleset(document: str, netns: str | None = None) -> None:
    """Load ``document`` in one nft transaction (all or nothing)."""
    if not document:
        return
    log.debug("--> nft -f - (%d lines)", document.count("\n"))
    _nft(["-f", "-"], document, netns)


def list_tables(netns: str | None = None) -> str:
    """The launcher's tables as ``nft list`` prints them ('' if none exist)."""
    out = []
    for family in ("inet", "bridge"):
        try:
            out.append(_nft(["list", "table", family, NFT_TABLE], None, netns))
        except NetworkError:
            continue
    return "".join(out)


def reload_document(listing: str) -> str:
    """An nft document that replaces the launcher's tables by ``listing`` (what
    :func:`list_tables` printed earlier): both tables are deleted, the listed ones made."""
    drop = "".join(
        f"table {family} {NFT_TABLE}\ndelete table {family} {NFT_TABLE}\n"
        for family in ("inet", "bridge")
    )
    return drop + listing


def delete_tables(netns: str | None = None) -> None:
    """Delete the launcher's tables in one transaction (no error if they are absent)."""
    doc = "".join(
        f"table {family} {NFT_TABLE}\ndelete table {family} {NFT_TABLE}\n"
        for family in ("inet", "bridge")
    )
    _nft(["-f", "-"], doc, netns)

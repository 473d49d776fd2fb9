"""Apply a NetworkPlan to the pod netns — the ONLY code that changes it — and undo it.

Called by the composition root after ``plan`` (and by ``cleanup`` at exit). ``apply``
is idempotent: every step compares the live state first and only changes what differs,
so a second run reports zero changes. Before an interface is touched its original state
is written to the state dir in phase ``configuring``; when everything is in place the
phase becomes ``configured``. A launcher restarted in the same pod therefore rediscovers
the original pod addresses and MAC from the cache (``discover(state_dir=…)``) and
re-applies to the same result; a record left in ``configuring`` is a StateCacheError.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import NetworkError, StateCacheError

from .discover import link_to_json
from .netlink import ADDR_GEN_MODE_NONE, Link, Netlink, Route
from .nftables import apply_ruleset, delete_tables, list_tables
from .plan import NetworkPlan, NicPlan
from .state import (
    DEFAULT_STATE_DIR,
    PHASE_CONFIGURED,
    PHASE_CONFIGURING,
    InterfaceRecord,
    read_record,
    remove_record,
    write_record,
)
from .sysctl import ensure_sysctls

__all__ = ["ApplyResult", "apply", "cleanup"]

log = logging.getLogger(__name__)
NFT_DIGEST_FILE = "nft.sha256"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """How many changes ``apply`` made (0 when the netns already matched the plan)."""

    changes: int


class _Changes:
    """Counts changes and keeps a view of the live links: one dump up front, then only
    the links a change touched are fetched again (a full dump per change is slow)."""

    def __init__(self, nl: Netlink) -> None:
        self.nl = nl
        self.count = 0
        self._links = {lk.name: lk for lk in nl.links()}
        self._stale: set[str] = set()
        self._routes: set[Route] | None = None

    def __call__(self, what: str, *names: str) -> None:
        self.count += 1
        self._stale.update(names)
        self._routes = None
        log.debug("--> %s", what)

    def get(self, name: str) -> Link | None:
        if name in self._stale or name not in self._links:
            self._stale.discard(name)
            fresh = self.nl.link(name)
            if fresh is None:
                self._links.pop(name, None)
                return None
            self._links[name] = fresh
        return self._links[name]

    def need(self, name: str) -> Link:
        link = self.get(name)
        if link is None:
            raise NetworkError(f"interface {name!r} disappeared from the pod while applying")
        return link

    def routes(self) -> set[Route]:
        if self._routes is None:
            names = {lk.index: name for name, lk in self._links.items()}
            self._routes = set(self.nl.routes(names))
        return self._routes


def _begin(state_dir: Path, nic: NicPlan) -> None:
    record = read_record(state_dir, nic.pod_interface)
    if record is None:
        write_record(
            state_dir,
            InterfaceRecord(
                pod_interface=nic.pod_interface,
                binding=nic.binding.value,
                phase=PHASE_CONFIGURING,
                original=link_to_json(nic.original),
            ),
        )
    elif record.phase != PHASE_CONFIGURED:
        raise StateCacheError(
            f"pod interface {nic.pod_interface!r} is in phase {record.phase!r} in {state_dir}; "
            "an earlier launcher stopped half-way, so the pod must be recreated"
        )
    elif record.binding != nic.binding.value:
        raise StateCacheError(
            f"pod interface {nic.pod_interface!r} was configured for binding "
            f"{record.binding!r}, not {nic.binding.value!r}"
        )


def _finish(state_dir: Path, nic: NicPlan) -> None:
    record = read_record(state_dir, nic.pod_interface)
    if record is not None and record.phase == PHASE_CONFIGURED:
        return
    write_record(
        state_dir,
        InterfaceRecord(
            pod_interface=nic.pod_interface,
            binding=nic.binding.value,
            phase=PHASE_CONFIGURED,
            original=link_to_json(nic.original),
        ),
    )


def _create_links(nl: Netlink, nic: NicPlan, changed: _Changes) -> None:
    br = nic.bridge
    have = changed.get(br.name)
    if have is None:
        nl.add_bridge(br.name, br.mac, br.mtu)
        changed(f"created bridge {br.name}", br.name)
    elif have.kind != "bridge":
        raise NetworkError(f"{br.name!r} exists in the pod but is a {have.kind!r}, not a bridge")
    tap = nic.tap
    have = changed.get(tap.name)
    if have is None:
        if tap.stand_in_netns and tap.stand_in_peer:
            nl.add_veth(tap.name, tap.stand_in_peer, tap.stand_in_netns, tap.mtu)
            with Netlink(tap.stand_in_netns) as guest:
                guest.set_link(tap.stand_in_peer, mac=tap.stand_in_mac, up=True)
        else:
            nl.add_tap(tap.name, tap.mtu, tap.multi_queue)
        changed(f"created tap {tap.name}", tap.name)
    else:
        want_kind = "veth" if tap.stand_in_netns else "tun"
        if have.kind != want_kind:
            raise NetworkError(f"{tap.name!r} exists in the pod but is a {have.kind!r}")
        if not tap.stand_in_netns and bool(have.multi_queue) != tap.multi_queue:
            raise NetworkError(
                f"tap {tap.name!r} exists with multi_queue={have.multi_queue}, "
                f"the plan needs {tap.multi_queue}"
            )


def _link_settings(nl: Netlink, nic: NicPlan, changed: _Changes) -> None:
    """Per-interface settings through netlink (before the links go up: a link without a
    kernel link-local must not get one when it comes up)."""
    for want in nic.link_settings:
        have = changed.need(want.name)
        ipv4 = tuple((k, v) for k, v in want.ipv4 if have.ipv4(k) != v)
        mode = None
        if want.no_link_local and have.addr_gen_mode not in (None, ADDR_GEN_MODE_NONE):
            mode = ADDR_GEN_MODE_NONE  # None: the kernel has no IPv6 on this link
        if ipv4 or mode is not None:
            nl.set_link_settings(want.name, ipv4=ipv4, addr_gen_mode=mode)
            changed(f"set {want.name} {dict(ipv4)} addr_gen_mode={mode}", want.name)


def _configure_links(nl: Netlink, nic: NicPlan, changed: _Changes) -> None:
    _link_settings(nl, nic, changed)
    br = nic.bridge
    have = changed.need(br.name)
    if have.mac != br.mac or have.mtu != br.mtu:
        nl.set_link(br.name, mac=br.mac, mtu=br.mtu)
        changed(f"set {br.name} mac/mtu", br.name)
    if not have.up:
        nl.set_link(br.name, up=True)
        changed(f"set {br.name} up", br.name)
    tap = changed.need(nic.tap.name)
    if tap.mtu != nic.tap.mtu or tap.master != br.name:
        nl.set_link(tap.name, mtu=nic.tap.mtu, master=br.name)
        changed(f"attached {tap.name} to {br.name}", tap.name)
    if not tap.up:
        nl.set_link(tap.name, up=True)
        changed(f"set {tap.name} up", tap.name)
    port = nic.pod_port
    if port is not None:
        pod = changed.need(port.name)
        if port.new_mac and pod.mac != port.new_mac:
            nl.set_link(port.name, up=False)
            nl.set_link(port.name, mac=port.new_mac)
            changed(f"changed {port.name} MAC to {port.new_mac}", port.name)
            pod = changed.need(port.name)  # link down drops IPv6 addresses
        for addr in port.remove_addresses:
            if addr in pod.addresses:
                nl.del_address(port.name, addr)
                changed(f"removed {addr} from {port.name}", port.name)
        if pod.master != port.bridge:
            nl.set_link(port.name, master=port.bridge)
            changed(f"attached {port.name} to {port.bridge}", port.name)
            pod = changed.need(port.name)
        if pod.learning is not port.learning:
            nl.set_learning(port.name, port.learning)
            changed(f"set learning={port.learning} on {port.name}", port.name)
        if not pod.up:
            nl.set_link(port.name, up=True)
            changed(f"set {port.name} up", port.name)
    present = set(changed.need(br.name).addresses)
    for addr in br.addresses:
        if addr not in present:
            nl.add_address(br.name, addr)
            changed(f"added {addr} to {br.name}", br.name)
    routes = changed.routes()
    for route in nic.routes:
        if route not in routes:
            nl.add_route(route)
            changed(f"added route {route.dst} via {route.gateway} dev {route.ifname}")


def _apply_nft(plan: NetworkPlan, state_dir: Path, netns: str | None) -> bool:
    """Load the plan's ruleset unless the recorded digest says it is loaded; True if loaded."""
    digest_path = state_dir / NFT_DIGEST_FILE
    digest = hashlib.sha256(plan.nftables.encode()).hexdigest()
    try:
        recorded = digest_path.read_text().strip()
    except FileNotFoundError:
        recorded = ""
    if not plan.nftables:
        return False
    if recorded == digest and list_tables(netns):
        return False
    apply_ruleset(plan.nftables, netns)
    try:
        digest_path.write_text(digest + "\n")
    except OSError as err:
        raise StateCacheError(f"cannot write {digest_path}: {err}") from err
    return True


def apply(
    plan: NetworkPlan, state_dir: Path = DEFAULT_STATE_DIR, *, netns: str | None = None
) -> ApplyResult:
    """Make the pod netns (``netns`` name, or the current one) match ``plan``."""
    state_dir = Path(state_dir)
    # the pod-level sysctls first: where they cannot be set, nothing is touched
    written = ensure_sysctls(plan.sysctls, netns)
    for nic in plan.nics:
        _begin(state_dir, nic)
    with Netlink(netns) as nl, ThreadPoolExecutor(1, thread_name_prefix="nft") as pool:
        # The ruleset matches interfaces by name only, so nft (a process: ~30 ms) loads
        # it while the links are made; both are done before apply returns.
        nft = pool.submit(_apply_nft, plan, state_dir, netns)
        changed = _Changes(nl)
        for nic in plan.nics:
            _create_links(nl, nic, changed)
        changed.count += len(written)
        for nic in plan.nics:
            _configure_links(nl, nic, changed)
        if nft.result():
            changed("loaded the nftables ruleset")
    for nic in plan.nics:
        _finish(state_dir, nic)
    log.info(
        "pod network applied",
        extra={"changes": changed.count, "nics": [n.pod_interface for n in plan.nics]},
    )
    return ApplyResult(changes=changed.count)


def cleanup(
    plan: NetworkPlan, state_dir: Path = DEFAULT_STATE_DIR, *, netns: str | None = None
) -> None:
    """Remove what the launcher created and give bridge-bound pod interfaces back their
    original MAC, addresses and routes; sysctls are left as they are (per-netns, harmless).
    """
    state_dir = Path(state_dir)
    delete_tables(netns)
    with Netlink(netns) as nl:
        for nic in plan.nics:
            nl.delete(nic.tap.name)
            nl.delete(nic.bridge.name)
            port = nic.pod_port
            if port is None:
                continue
            pod = nl.link(port.name)
            if pod is None:
                continue
            orig = nic.original
            if pod.mac != orig.mac:
                nl.set_link(port.name, up=False)
                nl.set_link(port.name, mac=orig.mac)
            nl.set_link(port.name, up=True)
            now = nl.link(port.name)
            present = set(now.addresses) if now is not None else set()
            restore: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
                *orig.addresses4,
                *orig.addresses6,
            ]
            for addr in restore:
                if addr not in present:
                    nl.add_address(port.name, addr)
            for route in orig.routes:
                try:
                    nl.add_route(route)
                except NetworkError as err:
                    log.warning("could not restore route %s: %s", route, err)
    for nic in plan.nics:
        remove_record(state_dir, nic.pod_interface)
    (state_dir / NFT_DIGEST_FILE).unlink(missing_ok=True)

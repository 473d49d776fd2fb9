"""Apply a NetworkPlan to the pod netns — the ONLY code that changes it — as one
transaction, and undo it at exit (``cleanup``).

Called by the composition root after ``plan`` (in the netlink child), by hot plug for one
NIC at a time, and ``cleanup`` at exit. ``apply`` goes:

1. **recover** — an earlier apply that did not finish (its launcher or netlink child was
   killed) is rolled back first (:func:`launcher.network.transaction.recover`); the plan,
   made by ``discover`` from the recorded originals, then meets the pod as the CNI made it.
2. **preflight**, nothing touched yet: each pod interface exists with the MAC and the
   addresses the plan moves, no foreign link has the launcher's names, ``/dev/net/tun``
   opens, libnftables loads, the pod-level sysctls are set or settable (else one line
   naming ``spec.securityContext.sysctls``), the state dir is writable with room for the
   records.
3. **the transaction record** (``network-txn.json``, written atomically): a snapshot of
   every pod interface — MAC, MTU, up/down, every address with its attributes in kernel
   order, routes, the ``net.ipv4.conf`` values the plan changes — the links the launcher
   makes, the previous values of the sysctls it writes, and its nftables tables to put
   back when other NICs' rules are loaded.
4. **the steps**: pod-level sysctls; bridges and taps created (down), their per-interface
   settings (netlink), the pod port (MAC, addresses off in reverse kernel order, bridge
   master, learning off, up), the bridge's addresses and routes; meanwhile a thread loads
   the nftables ruleset (the rules match interfaces by name).
5. **commit**: each interface record is written (phase ``configured``), then the
   transaction record is removed: the commit point.

A failure at any of 3–5 (a netlink error, a full state dir, nft refusing the ruleset,
anything) rolls the pod back to the snapshots — addresses, routes, MACs, link states,
the launcher's links and tables gone — and then raises (NetworkError: exit 3, with the
cause). A link that existed before the apply is never deleted by its rollback: a re-apply
of a configured, running NIC (the link refresh) is rolled back to the pod as it was just
before it — bridge, tap and pod port kept, addresses, nftables ruleset and interface
record put back — so the guest keeps its network. A kill -9 between any two steps leaves
the transaction record, and the next ``apply`` or ``recover`` rolls back from it. Every
step compares the live state first, so ``apply`` is idempotent: on a configured pod (a
restarted launcher) it changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError, NetworkError, StateCacheError

from . import nftables, state
from .discover import link_to_json
from .netlink import ADDR_GEN_MODE_NONE, Link, Netlink, Route
from .plan import NetworkPlan, NicPlan
from .state import DEFAULT_STATE_DIR, TXN_FILE, InterfaceRecord, Transaction
from .sysctl import Sysctl, write_sysctls
from .transaction import (
    NFT_DIGEST_FILE,
    begin_record,
    capture,
    check_state_dir,
    configured,
    follow_original,
    pod_knobs,
    preflight,
    recover,
    restore_link,
    rollback,
    snapshot_from_original,
)

__all__ = ["ApplyResult", "apply", "cleanup", "recover"]

log = logging.getLogger(__name__)


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


def _create_links(nl: Netlink, nic: NicPlan, changed: _Changes) -> None:
    """The NIC's bridge and tap (or stand-in veth), created down (checked in preflight)."""
    br = nic.bridge
    if changed.get(br.name) is None:
        nl.add_bridge(br.name, br.mac, br.mtu)
        changed(f"created bridge {br.name}", br.name)
    tap = nic.tap
    if changed.get(tap.name) is None:
        if tap.stand_in_netns and tap.stand_in_peer:
            nl.add_veth(tap.name, tap.stand_in_peer, tap.stand_in_netns, tap.mtu)
            with Netlink(tap.stand_in_netns) as guest:
                guest.set_link(tap.stand_in_peer, mac=tap.stand_in_mac, up=True)
        else:
            nl.add_tap(tap.name, tap.mtu, tap.multi_queue)
        changed(f"created tap {tap.name}", tap.name)


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
            # not marked stale: these settings are read only here, once per link, and
            # change nothing the later steps read (MAC, MTU, master, state, addresses),
            # so the next step need not read the link again (3 reads fewer per NIC)
            changed(f"set {want.name} {dict(ipv4)} addr_gen_mode={mode}")


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
        # reverse kernel order: an IPv4 secondary goes before its primary, which would
        # otherwise take it along (without promote_secondaries)
        for addr in reversed(pod.addresses):
            if addr in port.remove_addresses:
                nl.del_address(port.name, addr, missing_ok=True)
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


def _recorded_digest(path: Path) -> str:
    """The digest of the ruleset loaded last ('' when unknown). Only a cache: a file
    that is not what we wrote is logged and the ruleset simply loaded again."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as err:
        log.warning("cannot read %s (%s); the nftables ruleset is loaded again", path, err)
        return ""
    text = raw.decode("ascii", errors="replace").strip()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        log.warning("%s is not a digest the launcher wrote; the ruleset is loaded again", path)
        return ""
    return text


def _apply_nft(plan: NetworkPlan, state_dir: Path, netns: str | None) -> bool:
    """Load the plan's ruleset unless the recorded digest says it is loaded; True if loaded."""
    if not plan.nftables:
        return False
    digest_path = state_dir / NFT_DIGEST_FILE
    digest = hashlib.sha256(plan.nftables.encode()).hexdigest()
    if _recorded_digest(digest_path) == digest and nftables.list_tables(netns):
        return False
    nftables.apply_ruleset(plan.nftables, netns)
    state.write_text_atomic(digest_path, digest + "\n")
    return True


def _begin(
    nl: Netlink,
    plan: NetworkPlan,
    state_dir: Path,
    netns: str | None,
    *,
    links: Mapping[str, Link],
    records: dict[str, InterfaceRecord],
    pending: tuple[tuple[Sysctl, str], ...],
) -> Transaction:
    """Snapshot every pod interface (or take the recorded original of a configured one)
    and write the transaction record: the last step before the first change.

    Which of the NIC's links exist now is recorded (a rollback never deletes them). A
    NIC with a record is a re-apply of a running NIC (the link refresh, a restarted
    launcher): its pod interface and bridge are also captured as they are now, and its
    record kept, so a rollback returns to just before this apply instead of to the pod
    the CNI made (transaction.py)."""
    entries = []
    for nic in plan.nics:
        record = records.get(nic.pod_interface)
        existed = [n for n in (nic.tap.name, nic.bridge.name) if n in links]
        pod = links.get(nic.pod_interface)
        if record is not None:
            # the link refresh re-plans with the CNI's new addresses: exit restores those
            snap = follow_original(
                record.snapshot or snapshot_from_original(record.original), nic.original
            )
            running = [capture(nl, nic.pod_interface, pod_knobs(nic), link=pod)]
            if nic.bridge.name in existed:
                br = links[nic.bridge.name]
                running.append(capture(nl, br.name, pod_knobs(nic, br.name), link=br))
            entry = begin_record(nic, snap, existed=existed, running=running, previous=record)
        else:
            snap = capture(nl, nic.pod_interface, pod_knobs(nic), link=pod)
            entry = begin_record(nic, snap, existed=existed)
        entries.append(entry)
    ours = {nic.pod_interface for nic in plan.nics}
    others = [name for name in state.list_records(state_dir) if name not in ours]
    # rules are loaded (other NICs', hot plug; or a re-applied NIC's own): a rollback
    # puts them back as they were
    before = nftables.list_tables(netns) if (others or records) and plan.nftables else None
    txn = Transaction(
        nics=tuple(entries),
        sysctls=tuple((s.key, s.value, previous) for s, previous in pending),
        nft_before=before,
    )
    # the transaction record and the interface records each hold every snapshot/original
    need = sum(
        len(json.dumps(e.original))
        + len(json.dumps(state.snapshot_to_json(e.snapshot)))
        + sum(len(json.dumps(state.snapshot_to_json(r))) for r in e.running)
        for e in entries
        if e.snapshot is not None
    )
    check_state_dir(state_dir, 2 * need + len(before or "") + 256, 2 + len(entries))
    state.write_txn(state_dir, txn)
    return txn


def _commit(state_dir: Path, txn: Transaction) -> None:
    for entry in txn.nics:
        state.write_record(state_dir, configured(entry))
    state.remove_txn(state_dir)  # the commit point


def apply(
    plan: NetworkPlan, state_dir: Path = DEFAULT_STATE_DIR, *, netns: str | None = None
) -> ApplyResult:
    """Make the pod netns (``netns`` name, or the current one) match ``plan``, or leave it
    exactly as it was and raise (see the module docstring)."""
    state_dir = Path(state_dir)
    recover(state_dir, netns=netns)
    records = {
        nic.pod_interface: record
        for nic in plan.nics
        if (record := state.read_record(state_dir, nic.pod_interface)) is not None
    }
    with nftables.deferred_close(), Netlink(netns) as nl:
        links = {lk.name: lk for lk in nl.links()}  # read once for preflight and the record
        pending = preflight(links, plan, records, netns)
        txn = _begin(nl, plan, state_dir, netns, links=links, records=records, pending=pending)
        try:
            count = write_sysctls(pending, netns)
            with ThreadPoolExecutor(1, thread_name_prefix="nft") as pool:
                # libnftables loads the ruleset while the links are made (it releases
                # the GIL); both are done (the pool waits) before anything else happens
                nft = pool.submit(_apply_nft, plan, state_dir, netns)
                changed = _Changes(nl)
                for nic in plan.nics:
                    _create_links(nl, nic, changed)
                for nic in plan.nics:
                    _configure_links(nl, nic, changed)
                if nft.result():
                    changed("loaded the nftables ruleset")
            _commit(state_dir, txn)
        except BaseException as err:
            _roll_back(err, txn, state_dir, netns)
            if isinstance(err, OSError):
                raise NetworkError(f"pod network set-up failed: {err}") from err
            raise
    log.info(
        "pod network applied",
        extra={"changes": count + changed.count, "nics": [n.pod_interface for n in plan.nics]},
    )
    return ApplyResult(changes=count + changed.count)


def _roll_back(err: BaseException, txn: Transaction, state_dir: Path, netns: str | None) -> None:
    """Roll the pod back after ``err``; raise a NetworkError saying so if that fails too."""
    log.warning(
        "pod network set-up failed (%s); rolling the pod back", err, extra={"event": "rollback"}
    )
    try:
        rollback(txn, state_dir, netns)
    except (LauncherError, OSError) as again:
        raise NetworkError(
            f"{err}; rolling the pod back failed too ({again}), so "
            f"{state_dir / TXN_FILE} is kept and the next start retries"
        ) from err
    log.info("pod network restored as it was", extra={"event": "network-restored"})


def cleanup(
    plan: NetworkPlan, state_dir: Path = DEFAULT_STATE_DIR, *, netns: str | None = None
) -> None:
    """Remove what the launcher created and give each pod interface back exactly what it
    had (MAC, addresses, routes, up/down, net.ipv4.conf values) from its record; pod-level
    sysctls are left as they are (per netns, they die with the pod). An unfinished apply
    is rolled back first."""
    state_dir = Path(state_dir)
    recover(state_dir, netns=netns)
    errors: list[str] = []
    restored: list[str] = []
    # the tables' context closes after the links are deleted (nftables.deferred_close)
    with nftables.deferred_close():
        try:
            nftables.delete_tables(netns)
        except NetworkError as err:
            if nftables.available():  # else no table of ours can exist
                errors.append(str(err))
        with Netlink(netns) as nl:
            for nic in plan.nics:
                _remove_nic(nl, nic, state_dir, errors, restored)
    for name in restored:  # a record whose interface could not be restored is kept
        state.remove_record(state_dir, name)
    (state_dir / NFT_DIGEST_FILE).unlink(missing_ok=True)
    if errors:
        raise NetworkError(f"network cleanup failed: {'; '.join(errors)}")


def _remove_nic(
    nl: Netlink, nic: NicPlan, state_dir: Path, errors: list[str], restored: list[str]
) -> None:
    """cleanup for one NIC: its tap and bridge deleted, its pod interface restored from
    its record (or from the plan's view of it); failures go to ``errors``, the restored
    interface's name to ``restored``."""
    for name in (nic.tap.name, nic.bridge.name):
        try:
            nl.delete(name)
        except NetworkError as err:
            errors.append(str(err))
    try:
        record = state.read_record(state_dir, nic.pod_interface)
    except StateCacheError as err:
        errors.append(str(err))
        record = None
    if record is not None and record.snapshot is not None:
        snap = record.snapshot
    elif nic.pod_port is not None:  # no usable record: what the plan was made from
        snap = snapshot_from_original(link_to_json(nic.original))
    else:
        restored.append(nic.pod_interface)
        return
    try:
        restore_link(nl, snap)
        restored.append(nic.pod_interface)
    except NetworkError as err:
        errors.append(str(err))

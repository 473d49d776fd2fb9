"""The undo side of ``apply``: preflight, snapshots, rollback and crash recovery.

Called by ``apply`` (preflight before anything is touched; a snapshot of every pod
interface in the transaction record before the first change; rollback when a step
fails), by ``cleanup`` (the same restore at exit) and by :func:`recover` (a launcher
restarted after a crash, or the composition root after its netlink child was killed).

Undo is by state, not by replaying a log: the record holds the pod interface exactly as
found (:class:`~launcher.network.state.LinkSnapshot`) and the names of the links the
launcher makes; rolling back deletes those links and then makes each pod interface equal
to its snapshot again — bridge master released, MAC, MTU, up/down, the ``net.ipv4.conf``
values the plan changed, every address in order with its attributes, routes — then puts
the launcher's nftables tables and the pod-level sysctls back.

One rule holds for every rollback: **a link that existed when the transaction began is
never deleted by it** (:func:`created`: the entry's ``owned`` links minus the ones it
recorded as ``existed``). A first apply finds none of its links, so its rollback leaves
the pod as the CNI made it. A re-apply of a configured, running NIC (the link refresh,
docs/network.md) finds all of them: its entry is a *re-apply* (it carries the previous
interface record and ``running``, snapshots of the pod interface and the bridge taken
just before), and its rollback makes those links equal to ``running`` again — the
bridge, the tap and the pod port's bridge membership stay, the pod interface gets back
the addresses it had a moment ago (the new one the CNI put there), the launcher's
nftables ruleset is reloaded as it was, and the previous interface record is put back.

Every apply step's undo is part of that restore, and the restore is idempotent, so it
does not matter which steps ran before a failure or a kill -9: the same record rolls
back any of them, as often as needed. Restoring is planned by pure functions (:func:`link_steps`,
:func:`address_steps`, :func:`route_steps`, unit-tested) and checked afterwards against
the snapshot (:func:`verify`).

Address order matters for IPv4: the first address of a subnet is its primary; deleting
a primary deletes the subnet's secondaries with it (unless ``promote_secondaries``). So
addresses are deleted in reverse kernel order (secondaries first) and put back in kernel
order (each primary before its secondaries). The kernel lists IPv6 addresses of a scope
newest first, so they are put back in reverse order.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher.errors import NetworkError, StateCacheError

from . import nftables, state
from .discover import PodLink, link_from_json, link_to_json
from .netlink import Address, Link, Netlink, Route
from .plan import NetworkPlan, NicPlan
from .state import (
    DEFAULT_STATE_DIR,
    PHASE_CONFIGURED,
    PHASE_CONFIGURING,
    InterfaceRecord,
    LinkSnapshot,
    Transaction,
)
from .sysctl import Sysctl, pending_sysctls, restore_sysctls

__all__ = [
    "Step",
    "address_steps",
    "capture",
    "created",
    "link_steps",
    "preflight",
    "recover",
    "restore_link",
    "rollback",
    "route_steps",
    "snapshot_from_original",
    "follow_original",
    "verify",
]

log = logging.getLogger(__name__)

TUN_DEVICE = Path("/dev/net/tun")
_TUN_RDEV = (10, 200)  # misc char device 10:200
NFT_DIGEST_FILE = "nft.sha256"
_IFA_SETTABLE = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400 | 0x800
_IFA_F_NODAD = 0x02


# ---- preflight ----------------------------------------------------------------------


def _free_bytes(directory: Path) -> tuple[int, int]:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize, max(st.f_frsize, 512)


def check_state_dir(state_dir: Path, need_bytes: int, files: int) -> None:
    """The state dir exists (made if needed), is writable and has room for ``files``
    records of ``need_bytes`` in total; StateCacheError naming it and what to do."""
    hint = "mount a writable volume (an emptyDir) at --state-dir"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StateCacheError(
            f"state dir {state_dir} cannot be created ({err.strerror or err}): {hint}"
        ) from err
    try:
        read_only = bool(os.statvfs(state_dir).f_flag & os.ST_RDONLY)
    except OSError as err:
        raise StateCacheError(f"cannot stat state dir {state_dir}: {err.strerror}") from err
    if read_only or not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateCacheError(
            f"state dir {state_dir} is read-only: the launcher records the pod's original "
            f"addresses there before it changes them; {hint}"
        )
    free, block = _free_bytes(state_dir)
    # every file takes whole blocks, and a record is rewritten through a temp file
    need = need_bytes + 2 * files * block + block
    if free < need:
        raise StateCacheError(
            f"state dir {state_dir} has {free} bytes free, the network set-up needs {need} "
            "to record the pod's original state first; free space or give it a larger volume"
        )


def check_tun() -> None:
    """/dev/net/tun is the tun device and can be opened; NetworkError otherwise."""
    hint = "the Pod must get the tun device (e.g. resource devices.kubevirt.io/tun)"
    try:
        st = os.stat(TUN_DEVICE)
    except FileNotFoundError as err:
        raise NetworkError(f"{TUN_DEVICE} is missing, so no tap can be made: {hint}") from err
    except OSError as err:
        raise NetworkError(f"cannot stat {TUN_DEVICE}: {err.strerror}: {hint}") from err
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != _TUN_RDEV:
        raise NetworkError(f"{TUN_DEVICE} is not the tun device (char 10:200): {hint}")
    try:
        os.close(os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as err:
        raise NetworkError(f"cannot open {TUN_DEVICE}: {err.strerror}: {hint}") from err


def check_nft() -> None:
    """libnftables loads; NetworkError naming it otherwise."""
    nftables.check_library()


def _check_owned(nic: NicPlan, links: Mapping[str, Link]) -> None:
    br = links.get(nic.bridge.name)
    if br is not None and br.kind != "bridge":
        raise NetworkError(f"{br.name!r} exists in the pod but is a {br.kind!r}, not a bridge")
    tap = links.get(nic.tap.name)
    if tap is None:
        return
    want = "veth" if nic.tap.stand_in_netns else "tun"
    if tap.kind != want:
        raise NetworkError(f"{tap.name!r} exists in the pod but is a {tap.kind!r}")
    if not nic.tap.stand_in_netns and bool(tap.multi_queue) != nic.tap.multi_queue:
        raise NetworkError(
            f"tap {tap.name!r} exists with multi_queue={tap.multi_queue}, "
            f"the plan needs {nic.tap.multi_queue}"
        )


def preflight(
    links: Mapping[str, Link],
    plan: NetworkPlan,
    records: dict[str, InterfaceRecord],
    netns: str | None,
) -> tuple[tuple[Sysctl, str], ...]:
    """What can be checked before the pod is touched; returns the pod-level sysctls to
    write with their current values (NetworkError when they cannot be written).

    ``links``: the netns' links by name, as they are now; ``records``: the configured
    interface records of the plan's NICs (a restart).
    """
    for nic in plan.nics:
        pod = links.get(nic.pod_interface)
        if pod is None:
            present = ", ".join(sorted(n for n in links if n != "lo")) or "none"
            raise NetworkError(
                f"pod interface {nic.pod_interface!r} not found (interfaces: {present})"
            )
        _check_owned(nic, links)
        record = records.get(nic.pod_interface)
        if record is not None:
            if record.binding != nic.binding.value:
                raise StateCacheError(
                    f"pod interface {nic.pod_interface!r} was configured for binding "
                    f"{record.binding!r}, not {nic.binding.value!r}"
                )
            continue
        if nic.pod_port is not None:
            gone = [a for a in nic.pod_port.remove_addresses if a not in pod.addresses]
            if gone:
                raise NetworkError(
                    f"pod interface {nic.pod_interface!r} no longer has {gone[0]} (the plan "
                    "was made from an older view of the pod); nothing was changed"
                )
        if pod.mac != nic.original.mac:
            raise NetworkError(
                f"pod interface {nic.pod_interface!r} has MAC {pod.mac}, the plan was made "
                f"for {nic.original.mac}; nothing was changed"
            )
    if any(n.tap.stand_in_netns is None and n.tap.name not in links for n in plan.nics):
        check_tun()
    if plan.nftables:
        check_nft()
    return pending_sysctls(plan.sysctls, netns)


# ---- snapshots ----------------------------------------------------------------------


def _is_kernel_link_local(a: Address) -> bool:
    return a.address.version == 6 and a.address.ip.is_link_local


def capture(
    nl: Netlink, name: str, knobs: Iterable[str] = (), *, link: Link | None = None
) -> LinkSnapshot:
    """The pod interface ``name`` as it is now (``knobs``: the net.ipv4.conf values to keep;
    ``link``: the link as just read, saving a read)."""
    link = link if link is not None else nl.link(name)
    if link is None:
        raise NetworkError(f"pod interface {name!r} disappeared while the launcher read it")
    return LinkSnapshot(
        name=name,
        mac=link.mac,
        mtu=link.mtu,
        up=link.up,
        master=link.master,
        addresses=tuple(a for a in nl.addresses(name) if not _is_kernel_link_local(a)),
        routes=tuple(r for r in nl.routes({link.index: name}) if r.ifname == name),
        ipv4=tuple((k, v) for k in dict.fromkeys(knobs) if (v := link.ipv4(k)) is not None),
    )


def snapshot_from_original(original: dict[str, Any], *, up: bool = True) -> LinkSnapshot:
    """A snapshot from a PodLink as JSON (version 1 records: no flags, state assumed up)."""
    link = link_from_json(original)
    addrs = [Address(a) for a in link.addresses4]
    addrs += [Address(a, flags=_IFA_F_NODAD) for a in link.addresses6]
    return LinkSnapshot(
        name=link.name,
        mac=link.mac,
        mtu=link.mtu,
        up=up,
        master=None,
        addresses=tuple(addrs),
        routes=link.routes,
    )


def follow_original(snap: LinkSnapshot, original: PodLink) -> LinkSnapshot:
    """``snap`` with the global addresses of ``original`` (the plan's view of the pod
    interface): the same object when they agree. The link refresh (docs/network.md)
    re-plans a NIC whose pod address the CNI changed at run time; the interface is then
    given back the CNI's current addresses at exit, not the ones it had when the launcher
    started. Kept addresses keep their attributes and order; new ones are plain (IPv6
    without DAD), IPv4 after the kept ones, IPv6 before them (kernel order: newest
    first)."""
    want = {*original.addresses4, *original.addresses6}
    ours = [a for a in snap.addresses if not _is_kernel_link_local(a)]
    if {a.address for a in ours} == want:
        return snap
    kept = [a for a in ours if a.address in want]
    have = {a.address for a in kept}
    new4 = [Address(a) for a in original.addresses4 if a not in have]
    new6 = [Address(a, flags=_IFA_F_NODAD) for a in reversed(original.addresses6) if a not in have]
    v4 = [a for a in kept if a.address.version == 4]
    v6 = [a for a in kept if a.address.version == 6]
    return replace(snap, addresses=(*v4, *new4, *new6, *v6))


# ---- restore: pure planning ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One netlink change of a restore: ``op`` and its argument."""

    # release | master | down | up | mac | mtu | ipv4 | del_address | add_address | add_route
    op: str
    arg: Any = None


def link_steps(snap: LinkSnapshot, live: Link) -> list[Step]:
    """Master, MAC, MTU, admin state and net.ipv4.conf values back to ``snap``."""
    steps: list[Step] = []
    if live.master is not None and live.master != snap.master:
        steps.append(Step("release"))
    if snap.master is not None and live.master != snap.master:  # a running NIC's port
        steps.append(Step("master", snap.master))
    up = live.up
    if live.mac != snap.mac:
        if up:
            steps.append(Step("down"))
            up = False
        steps.append(Step("mac", snap.mac))
    if live.mtu != snap.mtu:
        steps.append(Step("mtu", snap.mtu))
    if up != snap.up:
        steps.append(Step("up" if snap.up else "down"))
    knobs = tuple((k, v) for k, v in snap.ipv4 if live.ipv4(k) != v)
    if knobs:
        steps.append(Step("ipv4", knobs))
    return steps


def _key(a: Address) -> tuple[Any, ...]:
    return (a.address, a.scope, a.broadcast, a.label, a.flags & _IFA_SETTABLE)


def address_steps(want: Sequence[Address], have: Sequence[Address]) -> list[Step]:
    """Make the link's addresses (kernel-made IPv6 link-locals aside) exactly ``want``,
    in order. Per family: nothing if equal; else delete every address in reverse kernel
    order (secondaries before their primary) and add ``want`` back (IPv4 in order, IPv6
    reversed: the kernel lists the newest first)."""
    steps: list[Step] = []
    for version in (4, 6):
        w = [a for a in want if a.address.version == version and not _is_kernel_link_local(a)]
        h = [a for a in have if a.address.version == version and not _is_kernel_link_local(a)]
        if [_key(a) for a in w] == [_key(a) for a in h]:
            continue
        steps += [Step("del_address", a.address) for a in reversed(h)]
        steps += [Step("add_address", a) for a in (w if version == 4 else reversed(w))]
    return steps


def route_steps(want: Sequence[Route], have: Iterable[Route]) -> list[Step]:
    """Add the routes of ``want`` that are missing: on-link ones (no gateway) first, since
    a gateway must be reachable when its route is added."""
    present = set(have)
    missing = [r for r in want if r not in present]
    missing.sort(key=lambda r: r.gateway is not None and not r.onlink)
    return [Step("add_route", r) for r in missing]


# ---- restore: doing it --------------------------------------------------------------


def _run(nl: Netlink, name: str, step: Step) -> None:
    if step.op == "release":
        nl.release(name)
    elif step.op == "master":
        nl.set_link(name, master=step.arg)
    elif step.op in ("up", "down"):
        nl.set_link(name, up=step.op == "up")
    elif step.op == "mac":
        nl.set_link(name, mac=step.arg)
    elif step.op == "mtu":
        nl.set_link(name, mtu=step.arg)
    elif step.op == "ipv4":
        nl.set_link_settings(name, ipv4=step.arg)
    elif step.op == "del_address":
        nl.del_address(name, step.arg, missing_ok=True)
    elif step.op == "add_address":
        nl.add_address(name, step.arg)
    elif step.op == "add_route":
        nl.add_route(step.arg)
    else:  # pragma: no cover - the planners make only the ops above
        raise ValueError(step.op)


def _live(nl: Netlink, name: str) -> Link:
    link = nl.link(name)
    if link is None:
        raise StateCacheError(
            f"pod interface {name!r} no longer exists, so its original addresses cannot be "
            "put back: the pod must be recreated"
        )
    return link


def restore_link(nl: Netlink, snap: LinkSnapshot) -> None:
    """Make pod interface ``snap.name`` exactly ``snap`` again (idempotent)."""
    name = snap.name
    for step in link_steps(snap, _live(nl, name)):
        _run(nl, name, step)
    for step in address_steps(snap.addresses, nl.addresses(name)):
        _run(nl, name, step)
    if not snap.routes:
        verify(nl, snap)
        return
    link = _live(nl, name)
    steps = route_steps(snap.routes, nl.routes({link.index: name}))
    failed: list[tuple[Step, NetworkError]] = []
    for step in steps:
        try:
            _run(nl, name, step)
        except NetworkError as err:
            failed.append((step, err))
    for step, _ in list(failed):  # one more pass: a route another one made reachable
        try:
            _run(nl, name, step)
            failed = [(s, e) for s, e in failed if s is not step]
        except NetworkError:
            pass
    if failed:
        raise failed[0][1]
    verify(nl, snap)


def verify(nl: Netlink, snap: LinkSnapshot) -> None:
    """NetworkError naming what differs when the pod interface is not ``snap``."""
    link = _live(nl, snap.name)
    wrong: list[str] = []
    if link.mac != snap.mac:
        wrong.append(f"MAC {link.mac} (was {snap.mac})")
    if link.mtu != snap.mtu:
        wrong.append(f"MTU {link.mtu} (was {snap.mtu})")
    if link.up != snap.up:
        wrong.append("up" if link.up else "down")
    if link.master != snap.master:
        wrong.append(f"master {link.master}")
    if address_steps(snap.addresses, nl.addresses(snap.name)):
        wrong.append("its addresses")
    missing = [r for r in snap.routes if r not in set(nl.routes({link.index: snap.name}))]
    if missing:
        wrong.append(f"route {missing[0].dst} via {missing[0].gateway}")
    for knob, value in snap.ipv4:
        if link.ipv4(knob) != value:
            wrong.append(f"{knob}={link.ipv4(knob)} (was {value})")
    if wrong:
        raise NetworkError(f"pod interface {snap.name!r} could not be restored: {', '.join(wrong)}")


# ---- rollback and recovery ----------------------------------------------------------


def _owned_v1(nl: Netlink, pod_interface: str) -> tuple[str, ...]:
    """Version 1 records do not name the launcher's links: the pod port's bridge (one of
    ours by its name) and that bridge's taps."""
    link = nl.link(pod_interface)
    master = link.master if link is not None else None
    if master is None or not master.startswith("vlbr"):
        return ()
    ports = [lk.name for lk in nl.links() if lk.master == master and lk.name != pod_interface]
    return (*ports, master)


def created(entry: InterfaceRecord) -> tuple[str, ...]:
    """The links a rollback of ``entry`` deletes: the ones the launcher makes for its NIC
    that did not exist when the transaction began (a link that existed then is never
    deleted by the rollback: a running NIC keeps its bridge and tap)."""
    return tuple(name for name in entry.owned if name not in entry.existed)


def _restore_nft(txn: Transaction, state_dir: Path, netns: str | None) -> None:
    ours = {n.pod_interface for n in txn.nics}
    others = [name for name in state.list_records(state_dir) if name not in ours]
    # rules that were loaded before: another NIC's, or a re-applied NIC's own
    kept = bool(others) or any(n.reapply for n in txn.nics)
    try:
        if kept and txn.nft_before is not None:
            nftables.apply_ruleset(nftables.reload_document(txn.nft_before), netns)
        elif not kept:
            nftables.delete_tables(netns)
    except NetworkError as err:
        if nftables.available():
            raise
        log.debug("no libnftables to check the launcher's tables with (none can exist): %s", err)
    (state_dir / NFT_DIGEST_FILE).unlink(missing_ok=True)


def rollback(txn: Transaction, state_dir: Path, netns: str | None = None) -> None:
    """Put every pod interface of ``txn`` back as it was when the transaction began,
    remove the links it made (:func:`created`; never one that existed before), restore
    the launcher's nft tables and the sysctls, then drop the records — or, for a
    re-applied NIC, put its previous record back. NetworkError (the transaction record
    kept, so a later attempt retries) when some of it could not be done."""
    errors: list[str] = []
    with Netlink(netns) as nl:
        doomed = {  # version 1 records (no snapshot) name no links
            n.pod_interface: created(n) if n.snapshot else _owned_v1(nl, n.pod_interface)
            for n in txn.nics
        }
        for nic in reversed(txn.nics):
            for name in doomed[nic.pod_interface]:
                try:
                    nl.delete(name)
                except NetworkError as err:
                    errors.append(str(err))
        for nic in txn.nics:
            try:
                if nic.reapply:  # a running NIC: back to just before, its links kept
                    for snap in nic.running:
                        restore_link(nl, snap)
                    continue
                snap = nic.snapshot or snapshot_from_original(nic.original)
                restore_link(nl, snap)
            except NetworkError as err:
                errors.append(str(err))
            except (ValueError, KeyError, TypeError) as err:
                errors.append(f"the record of {nic.pod_interface!r} is unusable: {err}")
    try:
        _restore_nft(txn, state_dir, netns)
    except NetworkError as err:
        errors.append(str(err))
    restore_sysctls(((Sysctl(key, value), previous) for key, value, previous in txn.sysctls), netns)
    if errors:
        raise NetworkError(f"rolling back the pod network failed: {'; '.join(errors)}")
    for nic in txn.nics:
        if nic.previous is None:
            state.remove_record(state_dir, nic.pod_interface)
        elif _current_record(state_dir, nic.pod_interface) != nic.previous:
            state.write_record(state_dir, nic.previous)  # the commit got half-way
    state.remove_txn(state_dir)


def _current_record(state_dir: Path, pod_interface: str) -> InterfaceRecord | None:
    try:
        return state.read_record(state_dir, pod_interface)
    except StateCacheError:  # a half-written one cannot be: writes are atomic
        return None


def _v1_half_done(state_dir: Path) -> Transaction | None:
    nics = []
    for name in state.list_records(state_dir):
        record = state.read_record(state_dir, name)
        if record is not None and record.phase == PHASE_CONFIGURING:
            nics.append(record)
    return Transaction(nics=tuple(nics)) if nics else None


def recover(state_dir: Path = DEFAULT_STATE_DIR, *, netns: str | None = None) -> bool:
    """Roll back a network set-up that did not finish (its launcher or netlink child was
    killed, or its own rollback failed); True if there was one. Idempotent and quick when
    there is nothing to do (a look at the state dir). Temp files of the records a killed
    writer left are removed either way.

    ``apply`` and ``cleanup`` call it first; the composition root should call it (in the
    netlink child: op ``recover``) when an ``apply`` call failed without an answer.
    """
    state_dir = Path(state_dir)
    state.remove_stale_temp(state_dir, NFT_DIGEST_FILE)  # a writer killed mid-write
    txn = state.read_txn(state_dir) or _v1_half_done(state_dir)
    if txn is None:
        return False
    names = [n.pod_interface for n in txn.nics]
    log.warning(
        "rolling back an unfinished pod network set-up of %s",
        ", ".join(names) or "no interface",
        extra={"event": "network-recover", "interfaces": names},
    )
    rollback(txn, state_dir, netns)
    log.info("pod network restored", extra={"event": "network-restored", "interfaces": names})
    return True


def begin_record(
    nic: NicPlan,
    snapshot: LinkSnapshot,
    *,
    existed: Iterable[str] = (),
    running: Iterable[LinkSnapshot] = (),
    previous: InterfaceRecord | None = None,
) -> InterfaceRecord:
    """The transaction entry of ``nic`` (phase configuring). ``existed``: which of its
    links were there already (never deleted by a rollback); ``previous`` and
    ``running``: a re-apply of a configured NIC (its record, and the links as they are
    now: what a rollback goes back to)."""
    owned = (nic.tap.name, nic.bridge.name)
    return InterfaceRecord(
        pod_interface=nic.pod_interface,
        binding=nic.binding.value,
        phase=PHASE_CONFIGURING,
        original=link_to_json(nic.original),
        snapshot=snapshot,
        owned=owned,
        existed=tuple(name for name in owned if name in set(existed)),
        running=tuple(running),
        previous=previous,
    )


def configured(record: InterfaceRecord) -> InterfaceRecord:
    """``record`` in phase configured (what the interface record holds after commit)."""
    return InterfaceRecord(
        pod_interface=record.pod_interface,
        binding=record.binding,
        phase=PHASE_CONFIGURED,
        original=record.original,
        snapshot=record.snapshot,
        owned=record.owned,
    )


def pod_knobs(nic: NicPlan, name: str | None = None) -> tuple[str, ...]:
    """The net.ipv4.conf knobs ``nic``'s plan changes on link ``name`` (its pod
    interface by default)."""
    name = name or nic.pod_interface
    return tuple(knob for s in nic.link_settings if s.name == name for knob, _ in s.ipv4)

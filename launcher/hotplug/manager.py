"""Execute hot-plug actions on the running VM and keep each interface's hot-plug state.

Started by the composition root (``launcher.run``) as the ``hotplug`` task of its
TaskGroup with the running spec, the boot network plan, the hypervisor and the run's NIC
owners (:class:`launcher.nics.Nics`); fed by :class:`launcher.hotplug.watch.Watcher`.
For every settled change it re-reads the spec with the same strict, bounded loader as
start-up (``launcher.spec.loads``) and the podinfo annotations (a document that fails
changes nothing and is logged), diffs them against what runs
(:func:`launcher.hotplug.diff.diff`) and:

* plug (bridge): plan the new NIC the way the run does (:func:`launcher.machine.plan_nic`)
  against the pod as it is now, hand it to a new NIC owner (``Nics.add``: pod plumbing
  through the run's one privileged runner, then its DHCPv4/DHCPv6/RA servers), then
  ``add_net`` it to the guest with its tap's fds (opened by the same runner);
  plug (sriov): ``add_vfio`` the VF;
* unplug: ``remove_device`` from the guest, then ``Nics.remove`` (servers closed,
  plumbing removed, the pod interface gets its addresses back);
* link state (``state: up``/``down`` of a running interface): ``set_link`` on its
  device; the board learns the new ``linkState`` and a ``link-state`` event is logged;
* link refresh (:meth:`Manager.follow_pod_addresses`, fed by the ``link-refresh`` task,
  :mod:`launcher.hotplug.refresh`): a bridge NIC whose pod interface got new addresses
  at run time is re-planned with them (``Nics.replan``: the address moved off the pod
  interface, the servers renewed) and its link is set down, held down for
  ``refresh_pause_s``, and up again, so the guest's DHCP client asks again; a
  ``link-refresh`` event is logged and shown in ``/status``.

Every step is bounded by ``step_timeout_s``. A failed plug removes what it added and
leaves the VM and its other NICs as they were; the error is kept in the interface's
:class:`InterfaceStatus` (``/status``). Changes that need a restart are logged and shown
as ``needs-restart``, never applied. Nothing a spec or annotation change carries ends
the run: every failure is caught (only cancellation passes), logged once, and the VM
keeps running.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hypervisor.base import Hypervisor
from launcher.errors import HypervisorError, LauncherError
from launcher.machine import (
    check_for_hypervisor,
    choose_hypervisor,
    net_device,
    plan_nic,
    vfio_device,
)
from launcher.network import NetworkPlan, NicPlan
from launcher.network.addrwatch import LinkAddresses
from launcher.network.devices import GuestVfio
from launcher.network.multus import PassthroughNic
from launcher.network.nftables import render
from launcher.nics import Nics
from launcher.options import RunOptions
from launcher.podinfo import ANNOTATIONS_FILE, PodInfo, load_podinfo
from launcher.spec import VmSpec, loads
from launcher.spec.model import InterfaceState
from launcher.status.model import StatusBoard

from .diff import PlugNic, SetLink, SpecDiff, UnplugNic, diff
from .refresh import Readdress, RefreshAction, decide, not_followed
from .watch import Snapshot, Watcher

__all__ = [
    "HotplugState",
    "InterfaceStatus",
    "Manager",
    "DEFAULT_STEP_TIMEOUT_S",
    "REFRESH_PAUSE_S",
]

log = logging.getLogger(__name__)

DEFAULT_STEP_TIMEOUT_S = 30.0
#: How long a link refresh keeps the guest NIC without carrier. NetworkManager ignores a
#: carrier loss shorter than 4 s on an activated device (LINK_DISCONNECT_DELAY), so a
#: shorter pause would not make such guests ask DHCP again; systemd-networkd, dhcpcd and
#: Windows react at once.
REFRESH_PAUSE_S = 5.0


class HotplugState(enum.StrEnum):
    """Where an interface stands as far as hot plug is concerned."""

    BOOT = "boot"  # attached when the VM started
    PLUGGING = "plugging"
    PLUGGED = "plugged"
    UNPLUGGING = "unplugging"
    UNPLUGGED = "unplugged"
    PENDING = "pending"  # asked for, its pod interface is not there yet
    FAILED = "failed"
    NEEDS_RESTART = "needs-restart"


@dataclass(frozen=True, slots=True)
class InterfaceStatus:
    """One interface's hot-plug state and the last error, as ``/status`` shows it."""

    name: str
    state: HotplugState
    last_error: str | None = None
    reason: str | None = None


def _read_addresses(interface: str) -> LinkAddresses:
    """``interface``'s global addresses, read over rtnetlink in this process (no
    capability needed; OSError when it is gone)."""
    from launcher.network.addrwatch import link_addresses  # noqa: PLC0415 - startup: hot plug

    return link_addresses(socket.if_nametoindex(interface))


class _StepFailed(Exception):
    """One hot-plug step failed; the message says which and why."""


class Manager:
    """Applies live NIC changes to one running VM; one instance per run."""

    def __init__(
        self,
        spec: VmSpec,
        plan: NetworkPlan,
        hypervisor: Hypervisor,
        nics: Nics,
        *,
        options: RunOptions,
        board: StatusBoard | None = None,
        step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
        refresh_pause_s: float = REFRESH_PAUSE_S,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.hypervisor = hypervisor
        self.nics = nics
        self.options = options
        self.board = board
        self.step_timeout_s = step_timeout_s
        self.refresh_pause_s = refresh_pause_s
        #: The global addresses of a pod interface now (the link refresh; tests replace it).
        self.read_addresses: Callable[[str], LinkAddresses] = _read_addresses
        self.passthrough: dict[str, PassthroughNic] = {p.name: p for p in plan.passthrough}
        self.status: dict[str, InterfaceStatus] = {}
        for iface in spec.interfaces:
            if iface.state is not InterfaceState.ABSENT:
                self._set(iface.name, HotplugState.BOOT, quiet=True)
            if iface.state is InterfaceState.DOWN and board is not None:
                board.set_link(iface.name, "down")
        self.last_error: str | None = None  # the last document that failed validation
        # interface → the pod addresses a link refresh failed for: not retried for them
        self._refresh_failed: dict[str, tuple[object, ...]] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ inputs

    def watched_files(self) -> list[Path]:
        """The spec file and (if configured) the podinfo annotations file."""
        files = [self.options.spec_path]
        if self.options.podinfo is not None:
            files.append(self.options.podinfo / ANNOTATIONS_FILE)
        return files

    def read_inputs(self, snapshot: Snapshot | None = None) -> tuple[VmSpec, PodInfo]:
        """Parse the spec (from ``snapshot`` if given) with start-up's strict loader, and
        the podinfo; raises LauncherError."""
        path = self.options.spec_path
        data = snapshot.content(path) if snapshot is not None else None
        if data is None:
            data = path.read_bytes()
        spec = loads(data, str(path))
        opts = self.options
        check_for_hypervisor(  # a model the VMM lacks is refused like at start-up
            spec,
            choose_hypervisor(spec, opts.hypervisor),
            qemu_binary=opts.qemu_binary,
            cache_dir=opts.state_dir,
        )
        return spec, load_podinfo(opts.podinfo)

    # ------------------------------------------------------------------ loop

    async def run(self, watcher: Watcher | None = None) -> None:
        """Watch the files and apply each settled change; runs until cancelled."""
        watcher = watcher or Watcher(self.watched_files())
        if not watcher.has_baseline:  # the baseline is what the VM started with
            watcher.baseline()
        async for snapshot in watcher.changes():
            await self.handle(snapshot)

    async def handle(self, snapshot: Snapshot | None = None) -> SpecDiff | None:
        """One change: re-read, diff, act. None when the new inputs were refused.

        Never raises (but cancellation): runtime input must not end a running VM.
        """
        try:
            new, podinfo = await asyncio.to_thread(self.read_inputs, snapshot)
        except (LauncherError, HypervisorError, OSError, RecursionError, MemoryError) as err:
            self.last_error = str(err) or type(err).__name__
            log.error(
                "hot plug: new spec or podinfo refused, nothing changed: %s",
                self.last_error,
                extra={"event": "hotplug-refused"},
            )
            return None
        self.last_error = None
        try:
            return await self.reconcile(new, podinfo)
        except Exception as err:  # a hot-plug bug must never end the VM's run
            self.last_error = f"hot plug failed unexpectedly: {type(err).__name__}: {err}"
            log.error("hot plug: %s", self.last_error, extra={"event": "hotplug-bug"})
            log.debug("traceback", exc_info=err)
            for name, st in list(self.status.items()):
                if st.state in (HotplugState.PLUGGING, HotplugState.UNPLUGGING):
                    self._set(name, HotplugState.FAILED, error=self.last_error)
            return None

    async def reconcile(self, new: VmSpec, podinfo: PodInfo | None) -> SpecDiff:
        """Diff ``new`` against what runs and execute the live actions."""
        async with self._lock:
            try:
                links = await self._step("listing the pod's links", self._pod_links())
            except _StepFailed as err:
                log.error("hot plug: %s", err)
                links = ()
            changes = diff(self.spec, new, podinfo, links, self.options.pod_interface)
            for item in changes.needs_restart:
                log.warning(
                    "hot plug: %s: %s; needs a restart, not applied",
                    item.what,
                    item.reason,
                    extra={"event": "hotplug-needs-restart"},
                )
                name = item.what.removeprefix("interface ").strip("'")
                if name in self.status:
                    self._set(name, HotplugState.NEEDS_RESTART, reason=item.reason)
            for pending in changes.pending:
                log.info("hot plug: %s pending: %s", pending.interface, pending.reason)
                self._set(pending.interface, HotplugState.PENDING, reason=pending.reason)
            for action in changes.actions:
                if isinstance(action, UnplugNic):
                    await self._unplug(action)
                else:
                    await self._plug(action, new, podinfo)
            for link in changes.links:
                await self._set_link(link, new)
            return changes

    async def _pod_links(self) -> tuple[str, ...]:
        pod = await self.nics.runner.discover()
        return tuple(link.name for link in pod.links)

    # ------------------------------------------------------------------ steps

    def _set(
        self,
        name: str,
        state: HotplugState,
        *,
        error: str | None = None,
        reason: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.status[name] = InterfaceStatus(name, state, error, reason)
        if self.board is not None:
            self.board.set_hotplug(name, state.value, error)
        if not quiet:
            log.info(
                "hot plug: interface %s %s",
                name,
                state,
                extra={"event": "hotplug", "interface": name, "state": str(state), "error": error},
            )

    async def _step(self, what: str, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run one bounded step; any failure becomes :class:`_StepFailed` naming it."""
        try:
            async with asyncio.timeout(self.step_timeout_s):
                return await coro
        except TimeoutError as err:
            raise _StepFailed(f"{what} timed out after {self.step_timeout_s:g}s") from err
        except (LauncherError, HypervisorError, OSError) as err:
            raise _StepFailed(f"{what} failed: {err}") from err

    async def _plug(self, action: PlugNic, new: VmSpec, podinfo: PodInfo | None) -> None:
        name = action.interface.name
        self._set(name, HotplugState.PLUGGING, reason=action.reason)
        try:
            pod = await self._step("reading the pod", self.nics.runner.discover())
            taken = {o.plan.index for o in self.nics}
            planned = plan_nic(new, pod, self.options, podinfo, name, avoid=taken)
        except (_StepFailed, LauncherError) as err:
            self._set(name, HotplugState.FAILED, error=f"planning failed: {err}")
            return
        try:
            if isinstance(planned, PassthroughNic):
                await self._plug_passthrough(planned)
            else:
                await self._plug_nic(planned)
        except _StepFailed as err:
            self._set(name, HotplugState.FAILED, error=str(err))
            return
        self._adopt(new, name)
        self._publish()
        self._set(name, HotplugState.PLUGGED)

    async def _plug_passthrough(self, pt: PassthroughNic) -> None:
        if not isinstance(pt.device, GuestVfio):
            raise _StepFailed(f"{pt.binding} devices cannot be plugged")
        device = vfio_device(pt.device)
        await self._step(f"hypervisor add_vfio {device.id}", self.hypervisor.add_vfio(device))
        self.passthrough[pt.name] = pt

    async def _plug_nic(self, nic: NicPlan) -> None:
        clash = next(
            (
                o.name
                for o in self.nics
                if {o.plan.tap.name, o.plan.bridge.name, o.plan.device.id}
                & {nic.tap.name, nic.bridge.name, nic.device.id}
            ),
            None,
        )
        if clash is not None:
            raise _StepFailed(
                f"its tap {nic.tap.name!r}/device {nic.device.id!r} would clash with "
                f"interface {clash!r}'s"
            )
        await self._step(f"wiring {nic.name!r}", self.nics.add(nic))
        try:
            device = net_device(nic.device)
            # The tap is opened by the runner (the privileged helper once the launcher has
            # dropped its capabilities) and reaches the VMM as fds: the VMM needs none.
            fds = await self._step(
                f"opening tap {device.tap!r}", self.nics.runner.open_tap(device.tap, device.queues)
            )
            try:
                await self._step(
                    f"hypervisor add_net {device.id}", self.hypervisor.add_net(device, fds)
                )
            finally:
                for fd in fds:
                    os.close(fd)
        except _StepFailed:
            await self._remove(nic.name)  # roll back: the pod as it was before
            raise

    async def _remove(self, name: str) -> str | None:
        """Remove ``name``'s owner (servers, plumbing); the error, if any."""
        try:
            await self._step(f"removing {name!r}'s plumbing", self.nics.remove(name))
        except _StepFailed as err:
            log.error("hot plug: %s", err)
            return str(err)
        return None

    async def _unplug(self, action: UnplugNic) -> None:
        name = action.interface.name
        owner = self.nics.get(name)
        pt = self.passthrough.get(name)
        device_id = owner.plan.device.id if owner else pt.device.id if pt else None
        if device_id is None:
            self._set(name, HotplugState.FAILED, error="no device was planned for it")
            return
        self._set(name, HotplugState.UNPLUGGING, reason=action.reason)
        try:
            await self._step(
                f"hypervisor remove_device {device_id}", self.hypervisor.remove_device(device_id)
            )
        except _StepFailed as err:
            self._set(name, HotplugState.FAILED, error=str(err))
            return
        error = await self._remove(name) if owner is not None else None
        self.passthrough.pop(name, None)
        self._drop(name)
        self._publish()
        self._set(name, HotplugState.UNPLUGGED, error=error)

    async def _set_link(self, action: SetLink, new: VmSpec) -> None:
        name, state = action.interface.name, "up" if action.up else "down"
        owner = self.nics.get(name)
        if owner is None:
            self._set(name, HotplugState.FAILED, error=f"link {state}: no guest NIC to set")
            return
        device_id = owner.plan.device.id
        try:
            await self._step(
                f"hypervisor set_link {device_id} {state}",
                self.hypervisor.set_link(device_id, action.up),
            )
        except _StepFailed as err:
            self._set(name, HotplugState.FAILED, error=str(err))
            return
        self._adopt(new, name)
        if self.board is not None:
            self.board.set_link(name, state)
            self.board.event("link-state", f"interface {name} link {state}", iface=name)
        log.info(
            "interface %s link %s",
            name,
            state,
            extra={"event": "link-state", "interface": name, "state": state},
        )

    # ------------------------------------------------------------------ link refresh

    def pod_indexes(self) -> frozenset[int]:
        """The interface indexes of the bridge NICs' pod interfaces (what the link
        refresh watches); a pod interface that is gone is left out."""
        out: set[int] = set()
        for owner in self.nics:
            if not_followed(owner.plan) is None:
                try:
                    out.add(socket.if_nametoindex(owner.plan.pod_interface))
                except OSError:
                    continue
        return frozenset(out)

    async def follow_pod_addresses(self) -> dict[str, Readdress]:
        """Read each bridge NIC's pod interface addresses and follow a change (module
        docstring). Never raises (but cancellation): the VM keeps running."""
        decisions: dict[str, Readdress] = {}
        async with self._lock:
            for owner in self.nics:
                if not_followed(owner.plan) is not None:
                    continue  # another binding, or nothing served: no need to look
                try:
                    now = await asyncio.to_thread(self.read_addresses, owner.plan.pod_interface)
                except OSError as err:
                    log.warning("link refresh: cannot read %s: %s", owner.plan.pod_interface, err)
                    continue
                decision = decide(owner.plan, now)
                decisions[owner.name] = decision
                if decision.action is RefreshAction.NONE:
                    self._refresh_failed.pop(owner.name, None)
                    continue
                target = (decision.addresses4, decision.addresses6)
                if self._refresh_failed.get(owner.name) == target:
                    # the rollback put the address back on the pod interface: that
                    # notification is not a reason to flap the guest's link again
                    log.debug("link refresh of %s already failed for %s", owner.name, target)
                    continue
                try:
                    await self._readdress(owner.plan, decision)
                except Exception as err:  # noqa: BLE001 - logged: must never end the VM's run
                    self._refresh_failed[owner.name] = target
                    self._refresh_failure(owner.plan, decision, err)
                else:
                    self._refresh_failed.pop(owner.name, None)
        return decisions

    def _refresh_failure(self, nic: NicPlan, decision: Readdress, err: Exception) -> None:
        """Report a failed link refresh: ``apply`` rolled the NIC back to just before it
        (bridge, tap and pod port kept), its servers still serve the old lease and its
        link is up again (docs/network.md, *Link refresh*)."""
        old = ", ".join(map(str, decision.old)) or "none"
        new = ", ".join(map(str, decision.new)) or "none"
        self.last_error = (
            f"link refresh of {nic.name!r} failed: {err}; the pod side was put back as it "
            f"was and the guest keeps its lease of {old} (not retried for {new} until the "
            "pod's addresses change again or the launcher restarts)"
        )
        log.error(
            "%s",
            self.last_error,
            extra={
                "event": "link-refresh-failed",
                "interface": nic.name,
                "reason": decision.reason,
                "old": [str(a) for a in decision.old],
                "new": [str(a) for a in decision.new],
            },
        )
        log.debug("traceback", exc_info=err)
        if self.board is not None:
            self.board.event("link-refresh-failed", self.last_error, iface=nic.name, address=old)

    async def _readdress(self, nic: NicPlan, decision: Readdress) -> None:
        name = nic.name
        old = ", ".join(map(str, decision.old)) or "none"
        new = ", ".join(map(str, decision.new)) or "none"
        try:
            pod = await self._step("reading the pod", self.nics.runner.discover())
            link = replace(
                pod.link(nic.pod_interface),
                addresses4=decision.addresses4,
                addresses6=decision.addresses6,
            )
            pod = replace(
                pod, links=tuple(link if lk.name == link.name else lk for lk in pod.links)
            )
            podinfo = await asyncio.to_thread(load_podinfo, self.options.podinfo)
            planned = plan_nic(self.spec, pod, self.options, podinfo, name, at=nic.index)
        except (_StepFailed, LauncherError) as err:
            raise _StepFailed(f"re-planning {name!r} with {new} failed: {err}") from err
        if not isinstance(planned, NicPlan) or planned.device != nic.device:
            raise _StepFailed(f"re-planning {name!r} with {new} changed its guest device")
        iface = next((i for i in self.spec.interfaces if i.name == name), None)
        refresh = decision.action is RefreshAction.REFRESH
        no_refresh: str | None = None
        if refresh and iface is not None and iface.state is InterfaceState.DOWN:
            no_refresh = "its link is down (spec state: down): it asks when it comes up"
        down_at: float | None = None
        if refresh and no_refresh is None:
            try:
                await self._step(
                    f"hypervisor set_link {nic.device.id} down",
                    self.hypervisor.set_link(nic.device.id, False),
                )
                down_at = time.monotonic()
            except _StepFailed as err:
                no_refresh = f"{err}; the guest gets {new} when it renews its lease"
        try:
            await self._step(f"re-wiring {name!r}", self.nics.replan(name, planned))
        finally:
            if down_at is not None:
                left = self.refresh_pause_s - (time.monotonic() - down_at)
                if left > 0:
                    await asyncio.sleep(left)
                await self._step(
                    f"hypervisor set_link {nic.device.id} up",
                    self.hypervisor.set_link(nic.device.id, True),
                )
        self._publish()
        if not refresh:
            log.info(
                "interface %s: %s moved off %s again (%s)",
                name,
                new,
                nic.pod_interface,
                decision.reason,
                extra={"event": "pod-address-moved", "interface": name, "addresses": new},
            )
            return
        what = "link refreshed" if no_refresh is None else f"link not refreshed: {no_refresh}"
        message = f"interface {name}: {decision.reason}; guest address {old} -> {new}; {what}"
        log.info(
            "%s",
            message,
            extra={
                "event": "link-refresh",
                "interface": name,
                "reason": decision.reason,
                "old": [str(a) for a in decision.old],
                "new": [str(a) for a in decision.new],
                "refreshed": no_refresh is None,
                "pause_s": self.refresh_pause_s if no_refresh is None else 0,
            },
        )
        if self.board is not None:
            self.board.event("link-refresh", message, iface=name, address=new)

    # ------------------------------------------------------------------ running spec

    def _adopt(self, new: VmSpec, name: str) -> None:
        """The running spec gains interface ``name`` (and its network) from ``new``."""
        iface = next(i for i in new.interfaces if i.name == name)
        network = new.network_for(iface)
        interfaces = (*(i for i in self.spec.interfaces if i.name != name), iface)
        networks = (*(n for n in self.spec.networks if n.name != network.name), network)
        self.spec = replace(self.spec, interfaces=interfaces, networks=networks)

    def _drop(self, name: str) -> None:
        """The running spec loses interface ``name``."""
        interfaces = tuple(i for i in self.spec.interfaces if i.name != name)
        used = {i.network for i in interfaces}
        networks = tuple(n for n in self.spec.networks if n.name in used)
        self.spec = replace(self.spec, interfaces=interfaces, networks=networks)

    def _publish(self) -> None:
        """The running network plan, as the status endpoint shows it."""
        plans = self.nics.plans
        self.plan = replace(
            self.plan,
            nics=plans,
            passthrough=tuple(self.passthrough.values()),
            nftables=render(n.nft for n in plans),
        )
        if self.board is not None:
            self.board.set_plan(self.plan)

    def snapshot(self) -> tuple[InterfaceStatus, ...]:
        """Every interface's hot-plug state, for ``/status``."""
        return tuple(self.status.values())

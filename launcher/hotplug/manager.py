"""Execute hot-plug actions on the running VM and keep each interface's hot-plug state.

Started by the composition root (``launcher.run``) as one task of its TaskGroup with the
running spec, the applied network plan and the hypervisor; fed by
:class:`launcher.hotplug.watch.Watcher`. For every settled change it re-parses the spec
and the podinfo annotations (a document that fails validation changes nothing and is
logged), diffs them against what runs (:func:`launcher.hotplug.diff.diff`) and:

* plug (bridge): plan the new NIC against the pod as it is now, apply its pod plumbing
  (bridge, tap, addresses moved off the pod interface), open its DHCPv4/DHCPv6/RA
  servers, then ``add_net`` it to the guest; plug (sriov): ``add_vfio`` the VF;
* unplug: ``remove_device`` from the guest, stop its DHCP servers, remove its plumbing
  and give the pod interface back its addresses.

Every step is bounded by ``step_timeout_s``. A failed plug rolls the pod plumbing back
and leaves the VM and its other NICs as they were; the error is kept in the interface's
:class:`InterfaceStatus` for ``/status``. Changes that need a restart are logged and
shown as ``needs-restart``, never applied.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from dhcp.errors import DhcpError
from dhcp.ra import RaServer
from dhcp.v4.server import Dhcp4Server
from dhcp.v6.server import Dhcp6Server
from hypervisor.base import Hypervisor
from hypervisor.machine import VfioDevice
from launcher.agent import call_once
from launcher.errors import HypervisorError, LauncherError, PodInfoError
from launcher.network import NetworkPlan, NicPlan, PlanOptions, PodState
from launcher.network import apply as apply_network
from launcher.network import cleanup as cleanup_network
from launcher.network import discover as discover_network
from launcher.network import plan as plan_network
from launcher.network.multus import PassthroughNic
from launcher.network.names import POD_INTERFACE
from launcher.network.nftables import apply_ruleset, render
from launcher.network.plan import NicContext
from launcher.podinfo import ANNOTATIONS_FILE, PodInfo, load_podinfo
from launcher.spec import VmSpec, parse
from launcher.spec.model import InterfaceState

from .diff import PlugNic, SpecDiff, UnplugNic, diff
from .watch import Snapshot, Watcher

__all__ = [
    "HotplugState",
    "InterfaceStatus",
    "Manager",
    "Plumbing",
    "PodPlumbing",
    "DEFAULT_STEP_TIMEOUT_S",
]

log = logging.getLogger(__name__)

DEFAULT_STEP_TIMEOUT_S = 30.0


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


class Plumbing(Protocol):
    """The pod-side work of a hot plug (the real one is :class:`PodPlumbing`)."""

    def pod_links(self) -> tuple[str, ...]:
        """Names of the links in the pod netns now."""
        ...

    def plan(
        self, spec: VmSpec, podinfo: PodInfo | None, name: str, avoid: Collection[int] = ()
    ) -> NicPlan | PassthroughNic:
        """Plan interface ``name`` of ``spec`` against the pod as it is now, with a NIC
        index (tap, bridge, device id) not in ``avoid`` (the running NICs')."""
        ...

    def apply(self, nic: NicPlan, others: Sequence[NicPlan]) -> None:
        """Create ``nic``'s bridge/tap and move its addresses; ``others`` keep running."""
        ...

    def remove(self, nic: NicPlan, others: Sequence[NicPlan]) -> None:
        """Undo :meth:`apply` for ``nic``; ``others`` keep running (and their nft rules)."""
        ...


@dataclass(frozen=True, slots=True)
class PodPlumbing:
    """The real pod plumbing: ``launcher.network`` discover/plan/apply/cleanup, one NIC.

    ``isolated``: run discover/apply/cleanup in a netlink child
    (:func:`launcher.agent.call_once`, the launcher's way: no pyroute2 in the
    long-lived process) instead of in this process (component tests).
    """

    state_dir: Path
    netns: str | None = None
    plan_options: PlanOptions = field(default_factory=PlanOptions)
    isolated: bool = False

    def _discover(self) -> PodState:
        if self.isolated:
            pod: PodState = call_once("discover", self.netns, self.state_dir)
            return pod
        return discover_network(self.netns, self.state_dir)

    def _apply(self, plan: NetworkPlan) -> None:
        if self.isolated:
            call_once("apply", plan, self.state_dir, netns=self.netns)
        else:
            apply_network(plan, self.state_dir, netns=self.netns)

    def _cleanup(self, plan: NetworkPlan) -> None:
        if self.isolated:
            call_once("cleanup", plan, self.state_dir, netns=self.netns)
        else:
            cleanup_network(plan, self.state_dir, netns=self.netns)

    def pod_links(self) -> tuple[str, ...]:
        """Names of the links in the pod netns now."""
        return tuple(link.name for link in self._discover().links)

    def plan(
        self, spec: VmSpec, podinfo: PodInfo | None, name: str, avoid: Collection[int] = ()
    ) -> NicPlan | PassthroughNic:
        """Plan the whole new spec (validation) and keep interface ``name``'s part; when
        its position-derived index is taken by a running NIC, re-plan it at the lowest
        free index."""
        from launcher.network.bindings import binding_for  # noqa: PLC0415 - like plan()

        pod = self._discover()
        options = replace(self.plan_options, podinfo=podinfo)
        planned = plan_network(spec, pod, options)
        for nic in planned.nics:
            if nic.name != name:
                continue
            if nic.index not in avoid:
                return nic
            free = next(i for i in range(len(avoid) + 1) if i not in avoid)
            iface = next(i for i in spec.interfaces if i.name == name)
            ctx = NicContext(
                spec=spec,
                interface=iface,
                index=free,
                pod_link=pod.link(nic.pod_interface),
                pod=pod,
                options=options,
            )
            return binding_for(iface).plan_nic(ctx)
        for pt in planned.passthrough:
            if pt.name == name:
                return pt
        raise LauncherError(f"interface {name!r} is not in the new network plan")

    def apply(self, nic: NicPlan, others: Sequence[NicPlan]) -> None:
        """Apply ``nic`` alone; nft is reloaded with every NIC's rules only if it adds any."""
        own = render([nic.nft])
        document = render([*(o.nft for o in others), nic.nft]) if own else ""
        self._apply(NetworkPlan(nics=(nic,), sysctls=nic.sysctls, nftables=document))

    def remove(self, nic: NicPlan, others: Sequence[NicPlan]) -> None:
        """Clean ``nic`` up, then reload the other NICs' nft rules (cleanup drops the tables)."""
        self._cleanup(NetworkPlan(nics=(nic,)))
        document = render(o.nft for o in others)
        if document:
            apply_ruleset(document, self.netns)


class RunState(Protocol):
    """What the manager keeps current for the status endpoint and the exit cleanup
    (``launcher.run.RunContext`` has these attributes)."""

    plan: NetworkPlan | None
    dhcp4: list[Dhcp4Server]
    dhcp6: list[Dhcp6Server]
    ra: list[RaServer]


class _Servers:
    """The DHCPv4/DHCPv6/RA servers of one hot-plugged NIC and their tasks."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.objects: list[Dhcp4Server | Dhcp6Server | RaServer] = []

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                async with asyncio.timeout(5.0):
                    await task
            except (asyncio.CancelledError, TimeoutError):
                pass
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                async with asyncio.timeout(5.0):
                    await result
        self.tasks.clear()
        self.closers.clear()


ServerSpawner = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


class Manager:
    """Applies live NIC changes to one running VM; one instance per run."""

    def __init__(
        self,
        spec: VmSpec,
        plan: NetworkPlan,
        hypervisor: Hypervisor,
        plumbing: Plumbing,
        *,
        spec_path: Path,
        podinfo_dir: Path | None,
        state_dir: Path,
        step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
        dhcp: bool = True,
        context: RunState | None = None,
        pod_interface: str = POD_INTERFACE,
    ) -> None:
        self.spec = spec
        self.pod_interface = pod_interface  # the pod network's interface (run --pod-interface)
        self.plan = plan
        self.context = context
        self.hypervisor = hypervisor
        self.plumbing = plumbing
        self.spec_path = spec_path
        self.podinfo_dir = podinfo_dir
        self.state_dir = state_dir
        self.step_timeout_s = step_timeout_s
        self.dhcp = dhcp
        self.nics: dict[str, NicPlan] = {n.name: n for n in plan.nics}
        self.passthrough: dict[str, PassthroughNic] = {p.name: p for p in plan.passthrough}
        self.status: dict[str, InterfaceStatus] = {
            i.name: InterfaceStatus(i.name, HotplugState.BOOT)
            for i in spec.interfaces
            if i.state is not InterfaceState.ABSENT
        }
        self.last_error: str | None = None  # the last document that failed validation
        self._servers: dict[str, _Servers] = {}
        self._hot_ids: set[int] = set()  # hot-plugged servers published to the context
        self._spawn: ServerSpawner = lambda coro, name: asyncio.create_task(coro, name=name)
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ inputs

    def watched_files(self) -> list[Path]:
        """The spec file and (if configured) the podinfo annotations file."""
        files = [self.spec_path]
        if self.podinfo_dir is not None:
            files.append(self.podinfo_dir / ANNOTATIONS_FILE)
        return files

    def read_inputs(self, snapshot: Snapshot | None = None) -> tuple[VmSpec, PodInfo]:
        """Parse the spec (from ``snapshot`` if given) and the podinfo; raises LauncherError."""
        data = snapshot.content(self.spec_path) if snapshot is not None else None
        if data is None:
            data = self.spec_path.read_bytes()
        try:
            document = yaml.safe_load(data)
        except yaml.YAMLError as err:
            raise LauncherError(f"{self.spec_path} is not valid YAML or JSON: {err}") from err
        spec = parse(document, str(self.spec_path))
        return spec, load_podinfo(self.podinfo_dir)

    # ------------------------------------------------------------------ loop

    async def run(self, watcher: Watcher | None = None) -> None:
        """Watch the files and apply each settled change; runs until cancelled."""
        watcher = watcher or Watcher(self.watched_files())
        if not watcher.has_baseline:  # the baseline is what the VM started with
            watcher.baseline()
        try:
            async with asyncio.TaskGroup() as group:
                self._spawn = lambda coro, name: group.create_task(coro, name=name)
                async for snapshot in watcher.changes():
                    await self.handle(snapshot)
        finally:
            for servers in list(self._servers.values()):
                await servers.stop()

    async def handle(self, snapshot: Snapshot | None = None) -> SpecDiff | None:
        """One change: re-read, diff, act. None when the new inputs were refused."""
        try:
            new, podinfo = await asyncio.to_thread(self.read_inputs, snapshot)
        except (LauncherError, HypervisorError, OSError) as err:
            self.last_error = str(err)
            log.error(
                "hot plug: new spec or podinfo refused, nothing changed: %s",
                err,
                extra={"event": "hotplug-refused"},
            )
            return None
        self.last_error = None
        try:
            return await self.reconcile(new, podinfo)
        except Exception as err:  # a hot-plug bug must never end the VM's run
            self.last_error = f"hot plug failed unexpectedly: {type(err).__name__}: {err}"
            log.exception("hot plug: %s", self.last_error)
            return None

    async def reconcile(self, new: VmSpec, podinfo: PodInfo | None) -> SpecDiff:
        """Diff ``new`` against what runs and execute the live actions."""
        async with self._lock:
            try:
                async with asyncio.timeout(self.step_timeout_s):
                    links = await asyncio.to_thread(self.plumbing.pod_links)
            except (LauncherError, HypervisorError, OSError, TimeoutError) as err:
                log.error("hot plug: cannot list the pod's links: %s", err or "timed out")
                links = ()
            changes = diff(self.spec, new, podinfo, links, self.pod_interface)
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
            return changes

    # ------------------------------------------------------------------ steps

    def _set(
        self, name: str, state: HotplugState, *, error: str | None = None, reason: str | None = None
    ) -> None:
        self.status[name] = InterfaceStatus(name, state, error, reason)
        log.info(
            "hot plug: interface %s %s",
            name,
            state,
            extra={"event": "hotplug", "interface": name, "state": str(state), "error": error},
        )

    async def _step(self, what: str, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            async with asyncio.timeout(self.step_timeout_s):
                return await coro
        except TimeoutError as err:
            raise LauncherError(f"{what} timed out after {self.step_timeout_s:g}s") from err

    async def _plug(self, action: PlugNic, new: VmSpec, podinfo: PodInfo | None) -> None:
        name = action.interface.name
        self._set(name, HotplugState.PLUGGING, reason=action.reason)
        try:
            taken = {n.index for n in self.nics.values()}
            planned = await self._step(
                f"planning {name!r}",
                asyncio.to_thread(self.plumbing.plan, new, podinfo, name, taken),
            )
        except (LauncherError, HypervisorError, OSError, KeyError, PodInfoError) as err:
            self._set(name, HotplugState.FAILED, error=f"planning failed: {err}")
            return
        if isinstance(planned, PassthroughNic):
            await self._plug_passthrough(name, planned)
        else:
            await self._plug_nic(name, planned)
        if self.status[name].state is HotplugState.PLUGGED:
            self._adopt(new, name)

    async def _plug_passthrough(self, name: str, pt: PassthroughNic) -> None:
        if not isinstance(pt.device, VfioDevice):
            self._set(name, HotplugState.FAILED, error=f"{pt.binding} devices cannot be plugged")
            return
        try:
            await self._step(f"add_vfio {pt.device.id}", self.hypervisor.add_vfio(pt.device))
        except (LauncherError, HypervisorError, OSError) as err:
            self._set(name, HotplugState.FAILED, error=f"hypervisor add_vfio failed: {err}")
            return
        self.passthrough[name] = pt
        self._publish()
        self._set(name, HotplugState.PLUGGED)

    async def _plug_nic(self, name: str, nic: NicPlan) -> None:
        clash = next(
            (
                o.name
                for o in self.nics.values()
                if {o.tap.name, o.bridge.name, o.device.id}
                & {nic.tap.name, nic.bridge.name, nic.device.id}
            ),
            None,
        )
        if clash is not None:
            self._set(
                name,
                HotplugState.FAILED,
                error=f"its tap {nic.tap.name!r}/device {nic.device.id!r} would clash with "
                f"interface {clash!r}'s",
            )
            return
        others = list(self.nics.values())
        try:
            await self._step(
                f"pod plumbing for {name!r}", asyncio.to_thread(self.plumbing.apply, nic, others)
            )
            if self.dhcp:
                await self._step(f"DHCP servers for {name!r}", self._start_servers(nic))
            await self._step(f"add_net {nic.device.id}", self.hypervisor.add_net(nic.device))
        except (LauncherError, HypervisorError, OSError) as err:
            await self._roll_back(name, nic, others)
            self._set(name, HotplugState.FAILED, error=str(err))
            return
        self.nics[name] = nic
        self._publish()
        self._set(name, HotplugState.PLUGGED)

    async def _roll_back(self, name: str, nic: NicPlan, others: list[NicPlan]) -> None:
        servers = self._servers.pop(name, None)
        if servers is not None:
            await servers.stop()
        try:
            await self._step(
                f"rolling back {name!r}", asyncio.to_thread(self.plumbing.remove, nic, others)
            )
        except (LauncherError, HypervisorError, OSError) as err:
            log.error("hot plug: roll back of %s failed: %s", name, err)

    async def _start_servers(self, nic: NicPlan) -> None:
        from launcher.run import dhcp_servers  # noqa: PLC0415 - run.py imports this module

        servers = _Servers()
        self._servers[nic.name] = servers
        d4, d6, ra = dhcp_servers(nic, self.state_dir)
        servers.objects.extend(x for x in (d4, d6, ra) if x is not None)
        if d4 is not None:
            await d4.start()
            servers.closers.append(d4.close)
            servers.tasks.append(self._spawn(self._serve(nic.name, d4.run()), f"dhcp4-{nic.name}"))
        if d6 is not None:
            await d6.open()
            servers.closers.append(d6.close)
            servers.tasks.append(self._spawn(self._serve(nic.name, d6.run()), f"dhcp6-{nic.name}"))
        if ra is not None:
            servers.closers.append(ra.close)
            servers.tasks.append(self._spawn(self._serve(nic.name, ra.run()), f"ra-{nic.name}"))

    async def _serve(self, name: str, running: Coroutine[Any, Any, None]) -> None:
        try:
            await running
        except (
            DhcpError,
            OSError,
            LauncherError,
            HypervisorError,
            ValueError,
        ) as err:  # never ends the run
            log.error("hot plug: a DHCP server of %s stopped: %s", name, err)
            current = self.status.get(name)
            if current is not None:
                self._set(name, current.state, error=f"DHCP server stopped: {err}")

    async def _stop_boot_servers(self, nic: NicPlan) -> None:
        """A NIC attached at boot: its servers are tasks of the run (``dhcp4-<name>``…)."""
        names = {f"dhcp4-{nic.name}", f"dhcp6-{nic.name}", f"ra-{nic.name}"}
        tasks = [t for t in asyncio.all_tasks() if t.get_name() in names]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        ctx = self.context
        if ctx is None:
            return
        bridge = nic.bridge.name
        for d4 in [o for o in ctx.dhcp4 if o.config.interface == bridge]:
            await d4.close()
            ctx.dhcp4.remove(d4)
        for d6 in [o for o in ctx.dhcp6 if o.config.interface == bridge]:
            d6.close()
            ctx.dhcp6.remove(d6)
        for ra in [o for o in ctx.ra if o.config.interface == bridge]:
            ra.close()
            ctx.ra.remove(ra)

    async def _unplug(self, action: UnplugNic) -> None:
        name = action.interface.name
        nic = self.nics.get(name)
        pt = self.passthrough.get(name)
        device_id = nic.device.id if nic is not None else pt.device.id if pt is not None else None
        if device_id is None:
            self._set(name, HotplugState.FAILED, error="no device was planned for it")
            return
        self._set(name, HotplugState.UNPLUGGING, reason=action.reason)
        try:
            await self._step(f"remove_device {device_id}", self.hypervisor.remove_device(device_id))
        except (LauncherError, HypervisorError, OSError) as err:
            self._set(name, HotplugState.FAILED, error=f"hypervisor remove_device failed: {err}")
            return
        error: str | None = None
        servers = self._servers.pop(name, None)
        if servers is not None:
            await servers.stop()
        elif nic is not None:
            await self._stop_boot_servers(nic)
        if nic is not None:
            del self.nics[name]
            try:
                await self._step(
                    f"removing {name!r}'s plumbing",
                    asyncio.to_thread(self.plumbing.remove, nic, list(self.nics.values())),
                )
            except (LauncherError, HypervisorError, OSError) as err:
                error = f"plumbing removal failed: {err}"
        else:
            self.passthrough.pop(name, None)
        self._publish()
        self._set(name, HotplugState.UNPLUGGED, error=error)
        self._drop(name)

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
        """Keep the run's plan and DHCP server lists current (status, exit cleanup)."""
        nics = tuple(self.nics.values())
        self.plan = replace(
            self.plan,
            nics=nics,
            passthrough=tuple(self.passthrough.values()),
            nftables=render(n.nft for n in nics),
        )
        ctx = self.context
        if ctx is None:
            return
        ctx.plan = self.plan
        ours = [o for servers in self._servers.values() for o in servers.objects]
        # boot NICs' servers stay; the hot-plugged ones are exactly those running now
        ctx.dhcp4[:] = [o for o in ctx.dhcp4 if id(o) not in self._hot_ids] + [
            o for o in ours if isinstance(o, Dhcp4Server)
        ]
        ctx.dhcp6[:] = [o for o in ctx.dhcp6 if id(o) not in self._hot_ids] + [
            o for o in ours if isinstance(o, Dhcp6Server)
        ]
        ctx.ra[:] = [o for o in ctx.ra if id(o) not in self._hot_ids] + [
            o for o in ours if isinstance(o, RaServer)
        ]
        self._hot_ids = {id(o) for o in ours}

    def snapshot(self) -> tuple[InterfaceStatus, ...]:
        """Every interface's hot-plug state, for ``/status``."""
        return tuple(self.status.values())

"""The one options type of a launcher: what ``run`` and ``plan`` are told, and hot plug uses.

Built by the CLI (``launcher.cli``) from the command line; read by the composition
(``launcher.machine.compose``), the run (``launcher.run``), the hot-plug manager and
``virt-launcher plan`` (``launcher.plandoc``), so the plan shows exactly what ``run``
would start. :meth:`RunOptions.from_args` refuses a key it does not know instead of
dropping it. See docs/run.md for each option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import UsageError
from launcher.network.names import IFNAMSIZ, POD_INTERFACE
from launcher.network.plan import DEFAULT_STATUS_PORT, PlanOptions
from launcher.network.state import DEFAULT_STATE_DIR
from launcher.network.sysfs import HostPaths
from launcher.podinfo import DEFAULT_PODINFO_DIR, PodInfo
from launcher.privsep.vmm import DEFAULT_VMM_USER, parse_user
from launcher.supervisor import DEFAULT_TERMINATION_LOG
from launcher.volumes import DEFAULT_VOLUMES_DIR

__all__ = ["RunOptions", "DEFAULT_HOTPLUG_PORTS"]

#: QEMU PCIe root ports kept free for NIC hot plug when ``--hotplug-ports`` is not given.
DEFAULT_HOTPLUG_PORTS = 4


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything a launcher is told besides the spec (see docs/run.md)."""

    spec_path: Path
    state_dir: Path = DEFAULT_STATE_DIR
    hypervisor: str | None = None  # None: from the spec's shape
    qemu_binary: str = "qemu-system-x86_64"
    cloud_hypervisor_binary: str = "cloud-hypervisor"
    accel: str = "auto"
    volumes_dir: Path = DEFAULT_VOLUMES_DIR
    termination_log: Path | None = DEFAULT_TERMINATION_LOG
    pod_interface: str = POD_INTERFACE
    console_log: Path | None = None  # None: serial lines on stdout after SERIAL_PREFIX
    reap: bool | None = None  # None: reap orphans only when PID 1
    status_port: int = DEFAULT_STATUS_PORT  # the status endpoint's port: never DNATed
    podinfo: Path | None = DEFAULT_PODINFO_DIR  # downward API dir (Multus network-status)
    hotplug_ports: int | None = None  # QEMU root ports kept free (None: DEFAULT_HOTPLUG_PORTS)
    host_root: Path = Path("/")  # where sys/ and dev/ are for the SR-IOV/vDPA checks
    vmm_user: str = DEFAULT_VMM_USER  # UID[:GID] the VMM runs as, or "keep" (docs/privileges.md)
    keep_privileges: bool = False  # in-process callers (tests): no capability drop after start

    @classmethod
    def from_args(cls, spec_path: Path, args: Mapping[str, Any]) -> RunOptions:
        """Options from the CLI's parsed values; a key this type does not have is a bug in
        the caller and is refused (never dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise TypeError(f"RunOptions has no option {', '.join(unknown)}")
        return cls(spec_path=spec_path, **args)

    def check(self) -> None:
        """Refuse values no launcher can use (UsageError, exit 2), before anything runs."""
        parse_user(self.vmm_user)
        name = self.pod_interface
        if not 0 < len(name) <= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
            raise UsageError(f"--pod-interface {name!r} is not a Linux interface name")

    def plan_options(self, podinfo: PodInfo | None) -> PlanOptions:
        """The network plan's knobs these options decide."""
        return PlanOptions(
            status_port=self.status_port,
            podinfo=podinfo,
            host=HostPaths(self.host_root),
            pod_interface=self.pod_interface,
        )

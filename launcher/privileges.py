"""The capabilities a VM's launcher needs, and the check that it has them.

One definition, used twice: ``virt-launcher manifest`` (:mod:`launcher.manifest`) puts
:func:`needed_capabilities` into the container's ``capabilities.add`` after dropping
ALL, and ``run`` (:mod:`launcher.run`) calls :func:`check_capabilities` once the plan is
made and before the pod network or any volume is touched, so a container started without
one of them exits 3 with one line naming it, what this VM needs it for and the Pod field
that grants it, instead of failing half-way with ``Operation not permitted``. Each
capability is derived from the network plan or the spec's disks (:func:`capability_reasons`);
docs/deploy.md explains each one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import NetworkError
from launcher.network.model import NetworkPlan
from launcher.privsep.vmm import DEFAULT_VMM_USER, parse_user
from launcher.spec.model import (
    BindingKind,
    ContainerDisk,
    DataVolume,
    EmptyDisk,
    HostDisk,
    InterfaceState,
    PersistentVolumeClaim,
    VmSpec,
)
from launcher.volumes import ResolvedVolumes, guest_read_only

__all__ = [
    "needed_capabilities",
    "check_capabilities",
    "capability_reasons",
    "handed_over_disks",
    "HandedOver",
    "block_volumes",
    "effective_capabilities",
    "CAPABILITY_REASONS",
    "CAPABILITY_BITS",
    "STARTUP_CAPABILITIES",
]

#: Why each capability is asked for (docs/deploy.md repeats this table); also their order.
CAPABILITY_REASONS: dict[str, str] = {
    "NET_ADMIN": "create the bridge and tap of each tap NIC, move the pod's MAC and "
    "addresses, set routes, load the nftables ruleset; delete the launcher's nftables "
    "tables at exit (every VM)",
    "NET_RAW": "DHCPv4 replies to clients without an address (AF_PACKET), DHCPv6 "
    "receive socket (AF_PACKET), router advertisements (raw ICMPv6)",
    "NET_BIND_SERVICE": "the DHCPv4 (UDP 67) and DHCPv6 (UDP 547) server ports",
    "SYS_RESOURCE": "raise RLIMIT_MEMLOCK for VFIO, which pins all guest memory",
    "SETUID": "start the VMM as uid 107 instead of root",
    "SETGID": "start the VMM as gid 107 (and drop root's supplementary groups)",
    "CHOWN": "give the VMM user (uid 107) the disk files it writes (docs/privileges.md)",
    # with the disks named by capability_reasons: only a VM with such a disk needs it
    "KILL": "stop the VMM, which runs as uid 107, hard when it does not power off (kept by "
    "the privileged helper after start-up; docs/privileges.md)",
}
#: Their bit numbers (linux/capability.h).
CAPABILITY_BITS: dict[str, int] = {
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "NET_BIND_SERVICE": 10,
    "SYS_RESOURCE": 24,
    "SETUID": 7,
    "SETGID": 6,
    "CHOWN": 0,
    "KILL": 5,
}
#: What ``run`` uses while it sets up and serves the network and hands the VMM user its
#: disks, so what it checks at start. SYS_RESOURCE is not among them (without it
#: RLIMIT_MEMLOCK stays at the hard limit, with a warning); SETUID/SETGID are checked by
#: whatever starts the VMM as its user.
STARTUP_CAPABILITIES = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "CHOWN")


def _has_vfio(spec: VmSpec) -> bool:
    return any(
        i.binding.kind is BindingKind.SRIOV and i.state is not InterfaceState.ABSENT
        for i in spec.interfaces
    )


def _what(source: object) -> str:
    """What the handed-over file of a disk backed by ``source`` is, for the reason."""
    match source:
        case ContainerDisk():
            return "containerDisk's qcow2 overlay"
        case PersistentVolumeClaim(claim_name=claim):
            return f"persistentVolumeClaim {claim}"
        case DataVolume(name=name):
            return f"dataVolume {name}"
        case HostDisk(path=path):
            return f"hostDisk {path}"
        case EmptyDisk():
            return "emptyDisk"
    return type(source).__name__  # pragma: no cover - validation knows every source


@dataclass(frozen=True, slots=True)
class HandedOver:
    """A spec disk whose file becomes the VMM user's, and what that file is."""

    disk: str  # the spec's disk name
    what: str  # e.g. "emptyDisk", "persistentVolumeClaim data-pvc"

    def __str__(self) -> str:
        return f"{self.disk!r} ({self.what})"


def handed_over_disks(
    spec: VmSpec, *, vmm_user: str = DEFAULT_VMM_USER, block: Collection[str] = ()
) -> tuple[HandedOver, ...]:
    """The disks whose file the launcher gives the VMM user before the spawn (what
    :func:`launcher.privsep.vmm.hand_over` chowns), in spec order.

    Every disk the guest writes (:func:`launcher.volumes.guest_read_only`) that is a
    regular file: a persistentVolumeClaim or dataVolume in filesystem mode (its
    ``disk.img``), a hostDisk, an emptyDisk, a writable containerDisk's qcow2 overlay
    (the image under it is only read). Never a read-only disk, a CD-ROM, the cloud-init
    ISO, a volume in ``block`` (a block device: checked writable by the user, not
    changed), the kernel, initrd or firmware (checked readable), the VMM's run directory
    or its QMP/API socket (the launcher's, passed in as an fd), the serial console (a
    pipe). Nothing at all with ``--vmm-user keep`` (the VMM is the launcher's user).
    """
    if parse_user(vmm_user) is None:
        return ()
    out = []
    for disk in spec.disks:
        volume = spec.volume_for(disk)
        if guest_read_only(disk, volume) or volume.name in block:
            continue
        out.append(HandedOver(disk.name, _what(volume.source)))
    return tuple(out)


def block_volumes(volumes: ResolvedVolumes) -> frozenset[str]:
    """The volumes ``run`` found to be block devices (``run``'s ``block`` argument above;
    the manifest knows them from ``--block-volume``)."""
    return frozenset(d.file.volume for d in volumes.disks if d.file.block)


def capability_reasons(
    spec: VmSpec,
    network: NetworkPlan,
    *,
    vmm_user: str = DEFAULT_VMM_USER,
    block: Collection[str] = (),
) -> dict[str, str]:
    """The capabilities the launcher container adds (after dropping ALL), in a fixed order,
    each with why this VM needs it.

    NET_ADMIN for every VM (tap plumbing; even a VM without tap NICs runs the exit cleanup,
    which deletes the launcher's nftables tables); NET_RAW and NET_BIND_SERVICE when a NIC
    is served DHCP or router advertisements (bridge with addresses, masquerade; not a
    plain-L2 bridge, not SR-IOV/vDPA); SYS_RESOURCE with an SR-IOV VF; SETUID and SETGID
    always, to run the VMM as uid/gid 107, and KILL to stop it hard (the privileged helper
    keeps KILL; docs/privileges.md); CHOWN only when the VMM runs as another user and
    there is a disk file to give it (:func:`handed_over_disks`, named in the reason).
    """
    caps = {"NET_ADMIN", "SETUID", "SETGID", "KILL"}
    for nic in network.nics:
        if nic.dhcp4 is not None:
            caps |= {"NET_BIND_SERVICE", "NET_RAW"}  # port 67 + AF_PACKET replies
        if nic.dhcp6 is not None:
            caps |= {"NET_BIND_SERVICE", "NET_RAW"}  # port 547 + AF_PACKET receive
        if nic.ra is not None:
            caps.add("NET_RAW")  # raw ICMPv6
    if _has_vfio(spec):
        caps.add("SYS_RESOURCE")
    reasons = {c: why for c, why in CAPABILITY_REASONS.items() if c in caps}
    disks = handed_over_disks(spec, vmm_user=vmm_user, block=block)
    if disks:
        user = parse_user(vmm_user)
        reasons["CHOWN"] = (
            f"give the VMM user ({user}) the disk files it writes: "
            f"disk{'s' if len(disks) > 1 else ''} {', '.join(map(str, disks))} "
            "(docs/privileges.md)"
        )
    return {c: reasons[c] for c in CAPABILITY_REASONS if c in reasons}


def needed_capabilities(
    spec: VmSpec,
    network: NetworkPlan,
    *,
    vmm_user: str = DEFAULT_VMM_USER,
    block: Collection[str] = (),
) -> tuple[str, ...]:
    """The names of :func:`capability_reasons`, in their fixed order."""
    return tuple(capability_reasons(spec, network, vmm_user=vmm_user, block=block))


def effective_capabilities(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The named capabilities (those in :data:`CAPABILITY_BITS`) this process holds."""
    for line in status.read_text(encoding="ascii").splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            return frozenset(n for n, bit in CAPABILITY_BITS.items() if mask >> bit & 1)
    raise NetworkError(f"{status} has no CapEff line")  # not Linux: nothing can run


def check_capabilities(
    spec: VmSpec,
    network: NetworkPlan,
    have: Collection[str] | None = None,
    *,
    vmm_user: str = DEFAULT_VMM_USER,
    block: Collection[str] = (),
) -> None:
    """NetworkError (exit 3) naming every capability ``run`` needs at start
    (:data:`STARTUP_CAPABILITIES`: the network ones ``network`` needs, CHOWN when a disk is
    handed over) that this process (or ``have``) lacks, with what this VM needs it for."""
    held = effective_capabilities() if have is None else frozenset(have)
    reasons = capability_reasons(spec, network, vmm_user=vmm_user, block=block)
    missing = [c for c in reasons if c in STARTUP_CAPABILITIES and c not in held]
    if missing:
        why = "; ".join(f"{c}: {reasons[c]}" for c in missing)
        raise NetworkError(
            f"missing capabilit{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} "
            f"({why}): add {'it' if len(missing) == 1 else 'them'} to the launcher "
            "container's securityContext.capabilities.add, as virt-launcher manifest does"
        )

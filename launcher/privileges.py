"""The capabilities a VM's launcher needs, and the check that it has them.

One definition, used twice: ``virt-launcher manifest`` (:mod:`launcher.manifest`) puts
:func:`needed_capabilities` into the container's ``capabilities.add`` after dropping
ALL, and ``run`` (:mod:`launcher.run`) calls :func:`check_capabilities` once the plan is
made and before the pod network is touched, so a container started without one of them
exits 3 with one line naming it and the Pod field that grants it, instead of failing
half-way with ``Operation not permitted``. docs/deploy.md explains each capability.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from launcher.errors import NetworkError
from launcher.network.model import NetworkPlan
from launcher.spec.model import BindingKind, InterfaceState, VmSpec

__all__ = [
    "needed_capabilities",
    "check_capabilities",
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
#: What ``run`` uses while it sets up and serves the network, so what it checks at start.
#: SYS_RESOURCE is not among them (without it RLIMIT_MEMLOCK stays at the hard limit, with
#: a warning); SETUID/SETGID are checked by whatever starts the VMM as its user.
STARTUP_CAPABILITIES = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")


def _has_vfio(spec: VmSpec) -> bool:
    return any(
        i.binding.kind is BindingKind.SRIOV and i.state is not InterfaceState.ABSENT
        for i in spec.interfaces
    )


def needed_capabilities(spec: VmSpec, network: NetworkPlan) -> tuple[str, ...]:
    """The capabilities the launcher container adds (after dropping ALL), in a fixed order.

    NET_ADMIN for every VM (tap plumbing; even a VM without tap NICs runs the exit cleanup,
    which deletes the launcher's nftables tables); NET_RAW and NET_BIND_SERVICE when a NIC
    is served DHCP or router advertisements (bridge with addresses, masquerade; not a
    plain-L2 bridge, not SR-IOV/vDPA); SYS_RESOURCE with an SR-IOV VF; SETUID and SETGID
    always, to run the VMM as uid/gid 107, CHOWN to give it its writable disk files, and
    KILL to stop it hard (the privileged helper keeps KILL; docs/privileges.md).
    """
    caps = {"NET_ADMIN", "SETUID", "SETGID", "CHOWN", "KILL"}
    for nic in network.nics:
        if nic.dhcp4 is not None:
            caps |= {"NET_BIND_SERVICE", "NET_RAW"}  # port 67 + AF_PACKET replies
        if nic.dhcp6 is not None:
            caps |= {"NET_BIND_SERVICE", "NET_RAW"}  # port 547 + AF_PACKET receive
        if nic.ra is not None:
            caps.add("NET_RAW")  # raw ICMPv6
    if _has_vfio(spec):
        caps.add("SYS_RESOURCE")
    return tuple(c for c in CAPABILITY_REASONS if c in caps)


def effective_capabilities(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The named capabilities (those in :data:`CAPABILITY_BITS`) this process holds."""
    for line in status.read_text(encoding="ascii").splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            return frozenset(n for n, bit in CAPABILITY_BITS.items() if mask >> bit & 1)
    raise NetworkError(f"{status} has no CapEff line")  # not Linux: nothing can run


def check_capabilities(
    spec: VmSpec, network: NetworkPlan, have: Collection[str] | None = None
) -> None:
    """NetworkError (exit 3) naming every capability ``run`` needs for ``network`` at start
    (:data:`STARTUP_CAPABILITIES`) that this process (or ``have``) lacks."""
    held = effective_capabilities() if have is None else frozenset(have)
    needed = [c for c in needed_capabilities(spec, network) if c in STARTUP_CAPABILITIES]
    missing = [c for c in needed if c not in held]
    if missing:
        why = "; ".join(f"{c}: {CAPABILITY_REASONS[c]}" for c in missing)
        raise NetworkError(
            f"missing capabilit{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} "
            f"({why}): add {'it' if len(missing) == 1 else 'them'} to the launcher "
            "container's securityContext.capabilities.add, as virt-launcher manifest does"
        )

"""Every interface, table and file name the network code generates, in one place.

Called by the bindings while planning and by ``apply``/``cleanup``; tests use the same
functions so a rename here cannot silently break them. All interface names are at most
15 characters (IFNAMSIZ - 1) and index-based, so they never depend on the length of a
pod interface name.
"""

from __future__ import annotations

import hashlib

from launcher.errors import NetworkError
from launcher.spec.model import Interface, MultusNetwork, VmSpec

__all__ = [
    "NFT_TABLE",
    "POD_INTERFACE",
    "bridge_name",
    "derived_mac",
    "device_id",
    "pod_interface_name",
    "stand_in_peer_name",
    "state_file_name",
    "tap_name",
]

IFNAMSIZ = 15
POD_INTERFACE = "eth0"
NFT_TABLE = "virt_launcher"  # used for both the ``inet`` (NAT) and ``bridge`` (filter) tables


def _checked(name: str) -> str:
    if not name or len(name) > IFNAMSIZ:
        raise NetworkError(f"generated interface name {name!r} is not 1-{IFNAMSIZ} characters")
    return name


def bridge_name(index: int) -> str:
    """The in-pod bridge for guest NIC ``index``."""
    return _checked(f"vlbr{index}")


def tap_name(index: int) -> str:
    """The tap the hypervisor opens for guest NIC ``index``."""
    return _checked(f"vltap{index}")


def stand_in_peer_name(index: int) -> str:
    """Test mode: the guest-netns end of the veth standing in for tap ``index``."""
    return _checked(f"vlg{index}")


def device_id(index: int) -> str:
    """The hypervisor device id of guest NIC ``index`` (used for hot unplug)."""
    return f"net{index}"


def pod_interface_name(spec: VmSpec, interface: Interface) -> str:
    """The pod interface the CNI created for ``interface``'s network.

    The pod network is ``eth0``; Multus secondary networks are ``net1``, ``net2``… in the
    order the spec lists them (Multus' default naming, as KubeVirt relies on).
    """
    network = spec.network_for(interface)
    if not isinstance(network.source, MultusNetwork):
        return POD_INTERFACE
    multus = [n.name for n in spec.networks if isinstance(n.source, MultusNetwork)]
    return _checked(f"net{multus.index(network.name) + 1}")


def derived_mac(seed: str, avoid: str | None = None) -> str:
    """A stable locally-administered unicast MAC derived from ``seed``, never ``avoid``."""
    for salt in range(16):
        digest = hashlib.sha256(f"{seed}/{salt}".encode()).digest()
        first = (digest[0] & 0xFC) | 0x02  # locally administered, unicast
        mac = ":".join(f"{b:02x}" for b in (first, *digest[1:6]))
        if mac != (avoid or "").lower():
            return mac
    raise NetworkError(f"could not derive a MAC from {seed!r} that differs from {avoid!r}")


def state_file_name(pod_interface: str) -> str:
    """The state-dir file recording the phase of ``pod_interface``."""
    return f"net-{pod_interface}.json"

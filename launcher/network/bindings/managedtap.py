"""managedtap binding (KubeVirt ``binding: {name: managedtap}``, also ``l2bridge``): the
CNI runs IPAM, DHCP and RA itself (Kube-OVN, OVN localnet, Harvester), the launcher only
connects the guest to the pod interface.

Called through the registry by ``plan``. The NIC is planned like a bridge NIC
(:mod:`.bridge`: bridge + tap, the guest takes the pod interface's MAC, the pod
interface gets a new stable MAC, loses its addresses, joins the bridge with MAC learning
off) with three differences: no DHCPv4/DHCPv6/RA server and no server address on the
bridge; DHCP and RA may cross the pod port (the CNI's server answers the guest by its
MAC); anti-spoofing checks the guest MAC only (the guest's addresses are the CNI's to
hand out). The pod's addresses are removed from the pod interface (the guest owns them
now: left there, the pod would answer ARP for them and the CNI's DHCP would hand out an
address the pod still holds) and kept in the state cache, so cleanup restores them.
"""

from __future__ import annotations

from launcher.spec.model import BindingKind

from .bridge import BridgeBinding

__all__ = ["ManagedTapBinding"]


class ManagedTapBinding(BridgeBinding):
    """Plans a managedtap guest NIC: a bridge NIC without any server of ours."""

    kind = BindingKind.MANAGEDTAP

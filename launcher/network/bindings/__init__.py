"""The binding registry: spec binding kind → the module that plans it.

Called by ``plan`` for each guest NIC. SR-IOV and vDPA NICs are host devices with no
tap: they are planned by ``PASSTHROUGH`` bindings (``passthrough_for``) into
``NetworkPlan.passthrough``.
"""

from __future__ import annotations

from launcher.errors import NetworkError
from launcher.spec.model import BindingKind, Interface

from ..multus import PassthroughBinding
from .bridge import BridgeBinding
from .managedtap import ManagedTapBinding
from .masquerade import MasqueradeBinding
from .protocol import Binding
from .sriov import SriovBinding
from .vdpa import VdpaBinding

__all__ = [
    "REGISTRY",
    "PASSTHROUGH",
    "Binding",
    "BridgeBinding",
    "ManagedTapBinding",
    "MasqueradeBinding",
    "PassthroughBinding",
    "SriovBinding",
    "VdpaBinding",
    "binding_for",
    "passthrough_for",
]

REGISTRY: dict[BindingKind, Binding] = {
    BindingKind.BRIDGE: BridgeBinding(),
    BindingKind.MASQUERADE: MasqueradeBinding(),
    BindingKind.MANAGEDTAP: ManagedTapBinding(),
}


PASSTHROUGH: dict[BindingKind, PassthroughBinding] = {
    BindingKind.SRIOV: SriovBinding(),
    BindingKind.VDPA: VdpaBinding(),
}


def passthrough_for(interface: Interface) -> PassthroughBinding | None:
    """The host-device binding for ``interface`` (SR-IOV, vDPA), or None for a tap NIC."""
    return PASSTHROUGH.get(interface.binding.kind)


def binding_for(interface: Interface) -> Binding:
    """The binding implementation for ``interface``; NetworkError if not supported yet."""
    kind = interface.binding.kind
    try:
        return REGISTRY[kind]
    except KeyError:
        raise NetworkError(
            f"interface {interface.name!r} uses binding {kind.value!r}, "
            "which this launcher does not support yet"
        ) from None

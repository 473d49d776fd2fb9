"""The binding registry: spec binding kind → the module that plans it.

Called by ``plan`` for each guest NIC. SR-IOV and vDPA are not implemented yet; asking
for them is a clear :class:`NetworkError`, never a silent skip.
"""

from __future__ import annotations

from launcher.errors import NetworkError
from launcher.spec.model import BindingKind, Interface

from .bridge import BridgeBinding
from .masquerade import MasqueradeBinding
from .protocol import Binding

__all__ = ["REGISTRY", "Binding", "BridgeBinding", "MasqueradeBinding", "binding_for"]

REGISTRY: dict[BindingKind, Binding] = {
    BindingKind.BRIDGE: BridgeBinding(),
    BindingKind.MASQUERADE: MasqueradeBinding(),
}


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

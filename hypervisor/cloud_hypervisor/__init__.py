"""cloud-hypervisor adapter: REST client, VmConfig builder, event-monitor parser, process.

The composition root creates a :class:`CloudHypervisor` (the ``Hypervisor`` protocol of
``hypervisor.base``); the other names are its building blocks, exported for tests and tools.
"""

from hypervisor.cloud_hypervisor.adapter import CloudHypervisor
from hypervisor.cloud_hypervisor.client import CloudHypervisorClient
from hypervisor.cloud_hypervisor.config import net_config, vm_config
from hypervisor.cloud_hypervisor.events import EventParser
from hypervisor.cloud_hypervisor.process import VmmProcess, require_binary
from hypervisor.cloud_hypervisor.taps import open_tap

__all__ = [
    "CloudHypervisor",
    "CloudHypervisorClient",
    "vm_config",
    "net_config",
    "EventParser",
    "VmmProcess",
    "require_binary",
    "open_tap",
]

"""The VM spec: loading, validation and the frozen normalized model.

``load(path)`` reads the manifest kubelet mounted into the pod (YAML or JSON, Virtink
or KubeVirt shape) and returns a :class:`VmSpec`; ``parse(document)`` does the same for
an in-memory document (hot-plug). Both raise :class:`launcher.errors.SpecError` listing
every problem as ``path: message``. Called by the CLI and the composition root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.spec.model import (
    Binding,
    BindingKind,
    Bridge,
    CloudInitNoCloud,
    ContainerDisk,
    Cpu,
    DataVolume,
    DhcpOptions,
    DhcpPrivateOption,
    Disk,
    EmptyDisk,
    HostDisk,
    Interface,
    InterfaceState,
    KernelBoot,
    Masquerade,
    MultusNetwork,
    Network,
    NetworkSource,
    PersistentVolumeClaim,
    PodNetwork,
    Port,
    PortRange,
    Protocol,
    SourceShape,
    Sriov,
    Vdpa,
    VmSpec,
    Volume,
    VolumeSource,
)
from launcher.spec.quantity import format_bytes, parse_quantity
from launcher.startup import lazy_exports

if TYPE_CHECKING:
    from launcher.spec.loader import load, loads, parse

__all__ = [
    "load",
    "loads",
    "parse",
    "VmSpec",
    "SourceShape",
    "Interface",
    "Network",
    "Binding",
    "BindingKind",
    "Bridge",
    "Masquerade",
    "Sriov",
    "Vdpa",
    "Port",
    "PortRange",
    "Protocol",
    "InterfaceState",
    "DhcpOptions",
    "DhcpPrivateOption",
    "NetworkSource",
    "PodNetwork",
    "MultusNetwork",
    "Cpu",
    "KernelBoot",
    "Disk",
    "Volume",
    "VolumeSource",
    "ContainerDisk",
    "CloudInitNoCloud",
    "PersistentVolumeClaim",
    "HostDisk",
    "DataVolume",
    "EmptyDisk",
    "parse_quantity",
    "format_bytes",
]


# The loader (PyYAML, the KubeVirt/Virtink readers) is imported on first use of
# load/loads/parse: the netlink child unpickles plans holding the model (startup: lazy
# package exports).
__getattr__ = lazy_exports(__name__, {"load": ".loader", "loads": ".loader", "parse": ".loader"})

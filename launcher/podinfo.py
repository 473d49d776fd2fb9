"""What the pod knows about its own secondary networks: Multus network-status and device plugins.

Called by the composition root and ``virt-launcher plan`` (``load_podinfo``) before the
network plan; ``launcher.network.multus`` maps spec networks to pod interfaces from it
and the SR-IOV/vDPA bindings take their PCI addresses and device paths from it.

Sources, in order of preference:

* the downward API annotations file kubelet writes (default ``/etc/podinfo/annotations``,
  ``--podinfo DIR``): one ``key="value"`` line per annotation, the value Go-quoted
  (``strconv.Quote``), lines sorted by key; ``networks-status`` (Multus before 3.7) is
  read when ``network-status`` is absent;
* the ``NETWORK_STATUS`` environment variable (Virtink passes the annotation this way),
  used when the annotations file has no network-status;
* the device plugins' ``PCIDEVICE_<RESOURCE>`` variables (comma-separated PCI addresses,
  the resource name upper-cased with every non-alphanumeric character turned into ``_``)
  and KubeVirt's ``KUBEVIRT_RESOURCE_NAME_<network>`` variables naming each network's
  resource.

Every problem is a :class:`PodInfoError` naming the file, line, variable or network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import PodInfoError

__all__ = [
    "ANNOTATIONS_FILE",
    "DEFAULT_PODINFO_DIR",
    "NETWORK_STATUS_ANNOTATION",
    "NETWORK_STATUS_ENV",
    "DeviceInfo",
    "Dns",
    "NetworkStatus",
    "PodInfo",
    "go_unquote",
    "load_podinfo",
    "parse_annotations",
    "parse_network_status",
    "pci_devices_from_env",
    "resource_env_name",
]

DEFAULT_PODINFO_DIR = Path("/etc/podinfo")
ANNOTATIONS_FILE = "annotations"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
OLD_NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks-status"  # Multus < 3.7
NETWORK_STATUS_ENV = "NETWORK_STATUS"
PCIDEVICE_PREFIX = "PCIDEVICE_"
KUBEVIRT_RESOURCE_PREFIX = "KUBEVIRT_RESOURCE_NAME_"

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_SHORT_PCI_ADDRESS = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_GO_ESCAPE = re.compile(
    r"\\(?:(?P<simple>[abfnrtv\\'\"])|x(?P<x>[0-9a-fA-F]{2})|u(?P<u>[0-9a-fA-F]{4})"
    r"|U(?P<U>[0-9a-fA-F]{8})|(?P<oct>[0-7]{3})|(?P<bad>.?))",
    re.DOTALL,
)
_SIMPLE = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
}


@dataclass(frozen=True, slots=True)
class Dns:
    """The ``dns`` member of a network-status entry."""

    nameservers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The ``device-info`` member (NPWG device-info spec): a PCI VF or a vDPA device."""

    type: str  # "pci", "vdpa", "vhost-user", "memif"
    pci_address: str | None = None  # the VF ("pci.pci-address" or "vdpa.pci-address")
    vdpa_path: str | None = None  # "/dev/vhost-vdpa-N" ("vdpa.path")
    vdpa_driver: str | None = None  # "vhost" or "virtio"
    pf_pci_address: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """One entry of ``k8s.v1.cni.cncf.io/network-status``."""

    name: str  # "namespace/network" (or a bare name for the cluster default network)
    interface: str | None = None
    # Multus writes bare addresses; a missing prefix length is left as /32 or /128
    ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    mac: str | None = None
    mtu: int | None = None
    default: bool = False
    dns: Dns = field(default_factory=Dns)
    gateway: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    device_info: DeviceInfo | None = None


@dataclass(frozen=True, slots=True)
class PodInfo:
    """Everything read from the downward API and the environment about secondary networks.

    ``network_status`` is None when no source had the annotation (as opposed to an
    empty list, which Multus writes for a pod without networks); ``source`` says where
    it came from. ``pci_devices`` maps a resource env suffix (``INTEL_COM_SRIOV``) to
    its addresses; ``network_resources`` maps a spec network name to its resource name.
    """

    network_status: tuple[NetworkStatus, ...] | None = None
    source: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    pci_devices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    network_resources: tuple[tuple[str, str], ...] = ()

    def pci_addresses(self, resource: str) -> tuple[str, ...]:
        """The addresses the device plugin allocated for ``resource`` (env name or resource)."""
        key = resource_env_name(resource)
        return dict(self.pci_devices).get(key, ())

    def resource_for(self, network: str) -> str | None:
        """The device-plugin resource KubeVirt announced for spec network ``network``."""
        return dict(self.network_resources).get(network)


def resource_env_name(resource: str) -> str:
    """``intel.com/sriov_netdevice`` → ``INTEL_COM_SRIOV_NETDEVICE`` (the device plugin's rule)."""
    if resource.startswith(PCIDEVICE_PREFIX):
        return resource[len(PCIDEVICE_PREFIX) :]
    return re.sub(r"[^A-Z0-9]", "_", resource.upper())


def go_unquote(text: str) -> str:
    """The string a Go ``strconv.Quote`` literal ``text`` (with its quotes) stands for."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError(f"{text[:40]!r} is not a double-quoted string")
    body = text[1:-1]

    def one(m: re.Match[str]) -> str:
        if m.group("simple") is not None:
            return _SIMPLE[m.group("simple")]
        for name in ("x", "u", "U"):
            if m.group(name) is not None:
                return chr(int(m.group(name), 16))
        if m.group("oct") is not None:
            return chr(int(m.group("oct"), 8))
        raise ValueError(f"unknown escape {m.group(0)!r}")

    if re.search(r'(?<!\\)(?:\\\\)*"', body):
        raise ValueError(f"unescaped quote in {text[:40]!r}")
    decoded = _GO_ESCAPE.sub(one, body)
    # \x escapes in Go strings are bytes: re-decode runs of them as UTF-8 when possible
    try:
        return decoded.encode("latin-1").decode("utf-8") if "\\x" in body else decoded
    except (UnicodeEncodeError, UnicodeDecodeError):
        return decoded


def parse_annotations(text: str, source: str = ANNOTATIONS_FILE) -> dict[str, str]:
    """The downward API annotations file: ``key="value"`` lines, values Go-quoted."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise PodInfoError(f'{source} line {number} is not key="value": {line[:80]!r}')
        try:
            out[key] = go_unquote(value)
        except ValueError as err:
            raise PodInfoError(
                f"{source} line {number} ({key}) has a badly quoted value: {err}"
            ) from err
    return out


def _ip(value: object, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise PodInfoError(f"{where} {value!r} is not an IP address string")
    try:
        # sriov-cni and some IPAMs write "10.1.1.5/24"; Multus writes bare addresses
        return ipaddress.ip_interface(value).ip
    except ValueError as err:
        raise PodInfoError(f"{where} {value!r} is not an IP address") from err


def _iface(value: object, where: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(value, str):
        raise PodInfoError(f"{where} {value!r} is not an IP address string")
    try:
        return ipaddress.ip_interface(value)
    except ValueError as err:
        raise PodInfoError(f"{where} {value!r} is not an IP address") from err


def _str_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PodInfoError(f"{where} {value!r} is not a list of strings")
    return list(value)


def normalize_pci_address(value: str, where: str) -> str:
    """``0000:3b:02.1`` form (lower case, domain added); PodInfoError naming ``where``."""
    addr = value.strip().lower()
    if _SHORT_PCI_ADDRESS.match(addr):
        addr = "0000:" + addr
    if not _PCI_ADDRESS.match(addr):
        raise PodInfoError(f"{where} {value!r} is not a PCI address like 0000:3b:02.1")
    return addr


def _device_info(raw: object, where: str) -> DeviceInfo:
    if not isinstance(raw, dict):
        raise PodInfoError(f"{where} is not an object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise PodInfoError(f"{where}.type {kind!r} is not a string")
    sub = raw.get(kind, {})
    if not isinstance(sub, dict):
        raise PodInfoError(f"{where}.{kind} is not an object")

    def opt(key: str) -> str | None:
        value = sub.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise PodInfoError(f"{where}.{kind}.{key} {value!r} is not a string")
        return value

    pci = opt("pci-address")
    pf = opt("pf-pci-address")
    return DeviceInfo(
        type=kind,
        pci_address=normalize_pci_address(pci, f"{where}.{kind}.pci-address") if pci else None,
        vdpa_path=opt("path") if kind == "vdpa" else None,
        vdpa_driver=opt("driver") if kind == "vdpa" else None,
        pf_pci_address=normalize_pci_address(pf, f"{where}.{kind}.pf-pci-address") if pf else None,
    )


def _entry(raw: object, index: int, source: str) -> NetworkStatus:
    where = f"{source}[{index}]"
    if not isinstance(raw, dict):
        raise PodInfoError(f"{where} is not an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PodInfoError(f"{where}.name {name!r} is not a network name")
    where = f"{source} entry for network {name!r}"
    iface = raw.get("interface")
    if iface is not None and not isinstance(iface, str):
        raise PodInfoError(f"{where}: interface {iface!r} is not a string")
    mac = raw.get("mac")
    if mac is not None:
        if not isinstance(mac, str) or not re.fullmatch(
            r"(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", mac
        ):
            raise PodInfoError(f"{where}: mac {mac!r} is not a MAC address")
        mac = mac.lower()
    mtu = raw.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 68):
        raise PodInfoError(f"{where}: mtu {mtu!r} is not a valid MTU")
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise PodInfoError(f"{where}: default {default!r} is not true or false")
    dns_raw = raw.get("dns") or {}
    if not isinstance(dns_raw, dict):
        raise PodInfoError(f"{where}: dns {dns_raw!r} is not an object")
    domain = dns_raw.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise PodInfoError(f"{where}: dns.domain {domain!r} is not a string")
    dns = Dns(
        nameservers=tuple(
            _ip(v, f"{where}: dns.nameservers")
            for v in _str_list(dns_raw.get("nameservers"), f"{where}: dns.nameservers")
        ),
        domain=domain or None,
        search=tuple(_str_list(dns_raw.get("search"), f"{where}: dns.search")),
    )
    info_raw = raw.get("device-info")
    return NetworkStatus(
        name=name,
        interface=iface or None,
        ips=tuple(_iface(v, f"{where}: ips") for v in _str_list(raw.get("ips"), f"{where}: ips")),
        mac=mac,
        mtu=mtu,
        default=default,
        dns=dns,
        gateway=tuple(
            _ip(v, f"{where}: gateway") for v in _str_list(raw.get("gateway"), f"{where}: gateway")
        ),
        device_info=_device_info(info_raw, f"{where}: device-info") if info_raw else None,
    )


def parse_network_status(
    text: str, source: str = NETWORK_STATUS_ANNOTATION
) -> tuple[NetworkStatus, ...]:
    """The network-status JSON list as frozen entries; PodInfoError naming the bad entry."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise PodInfoError(f"{source} is not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise PodInfoError(f"{source} is not a JSON list but {type(data).__name__}")
    return tuple(_entry(raw, i, source) for i, raw in enumerate(data))


def pci_devices_from_env(
    environ: Mapping[str, str],
) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[tuple[str, str], ...]]:
    """(``PCIDEVICE_*`` resources → addresses, KubeVirt network → resource) from ``environ``."""
    devices: list[tuple[str, tuple[str, ...]]] = []
    resources: list[tuple[str, str]] = []
    for key in sorted(environ):
        value = environ[key]
        if key.startswith(PCIDEVICE_PREFIX) and not key.endswith("_INFO"):
            addrs = tuple(
                normalize_pci_address(a, f"environment variable {key} address")
                for a in value.split(",")
                if a.strip()
            )
            devices.append((key[len(PCIDEVICE_PREFIX) :], addrs))
        elif key.startswith(KUBEVIRT_RESOURCE_PREFIX) and value:
            resources.append((key[len(KUBEVIRT_RESOURCE_PREFIX) :], value))
    return tuple(devices), tuple(resources)


def load_podinfo(
    podinfo_dir: Path | None = DEFAULT_PODINFO_DIR, environ: Mapping[str, str] | None = None
) -> PodInfo:
    """Read the annotations file (if present) and the environment into a :class:`PodInfo`.

    A missing podinfo directory or annotations file is not an error (a pod without
    secondary networks has none); a malformed one is.
    """
    env = os.environ if environ is None else environ
    annotations: dict[str, str] = {}
    path = podinfo_dir / ANNOTATIONS_FILE if podinfo_dir is not None else None
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as err:
            raise PodInfoError(f"cannot read {path}: {err}") from err
        annotations = parse_annotations(text, str(path))
    status: tuple[NetworkStatus, ...] | None = None
    source: str | None = None
    key = next(
        (k for k in (NETWORK_STATUS_ANNOTATION, OLD_NETWORK_STATUS_ANNOTATION) if k in annotations),
        None,
    )
    if key is not None:
        source = f"{path} {key}"
        status = parse_network_status(annotations[key], source)
    elif env.get(NETWORK_STATUS_ENV):
        source = f"environment variable {NETWORK_STATUS_ENV}"
        status = parse_network_status(env[NETWORK_STATUS_ENV], source)
    devices, resources = pci_devices_from_env(env)
    return PodInfo(
        network_status=status,
        source=source,
        annotations=tuple(sorted(annotations.items())),
        pci_devices=devices,
        network_resources=resources,
    )

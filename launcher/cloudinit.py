"""cloud-init NoCloud seed disks: an ISO 9660 image labelled ``cidata`` with the guest's data.

Called by the composition root (``build_seeds`` after the network plan, before the
machine is built) and by ``virt-launcher plan`` (``seed_content`` only, to show what the
guest would get). For every ``cloudInitNoCloud`` (KubeVirt) / ``cloudInit`` (Virtink)
volume the ISO holds:

``user-data``
    the spec's ``userData`` verbatim (empty when absent).
``meta-data``
    ``instance-id`` (the VM's uid, else ``<name>.<namespace>`` as KubeVirt does) and
    ``local-hostname`` (the spec's hostname, else the VM name).
``network-config``
    the user's ``networkData``, merged with a generated netplan v2 document when a NIC
    cannot use DHCP: an SR-IOV VF or vDPA device, or a plain-L2 bridge NIC (no address
    on its pod interface, so no DHCP is served) whose addresses the CNI reported in the
    Multus network-status. Generated entries match the guest
    NIC by MAC. Without user ``networkData`` the DHCP NICs are listed too (``dhcp4``/
    ``dhcp6`` by MAC, with ``use-domains`` when the lease carries a search list, which
    systemd-networkd otherwise ignores), since a network-config replaces cloud-init's
    DHCP fallback; with
    it, the user's entries win and only the static NICs are added (entries the user
    already matches by MAC or names the same are left to the user). A version 1 user
    document is kept as it is (with a warning). No network-config file is written when
    there is nothing to say.

The image is written with pycdlib (Rock Ridge and Joliet names, as ``cloud-localds``
and ``genisoimage -volid cidata -joliet -rock`` make it), to a temp file renamed into
place.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import Problem, SpecError, VolumeError
from launcher.network.bindings.sriov import CniFields, passthrough_fields
from launcher.network.plan import NetworkPlan
from launcher.spec.model import CloudInitNoCloud, VmSpec, Volume
from launcher.volumes import FileState, ResolvedVolumes, VolumeKind

__all__ = [
    "VOLUME_LABEL",
    "SeedContent",
    "build_iso",
    "build_seeds",
    "generated_network_config",
    "merge_network_config",
    "seed_content",
]

log = logging.getLogger(__name__)

VOLUME_LABEL = "cidata"
# ISO 9660 level-1 names (8.3, upper case) and the names Rock Ridge / Joliet readers see
_FILES = (
    ("user-data", "/USERDATA.;1"),
    ("meta-data", "/METADATA.;1"),
    ("network-config", "/NETWORKC.;1"),
)


@dataclass(frozen=True, slots=True)
class SeedContent:
    """The files of one NoCloud seed."""

    user_data: str
    meta_data: str
    network_config: str | None = None

    def files(self) -> dict[str, bytes]:
        """File name → bytes, as they go on the ISO."""
        out = {"user-data": self.user_data.encode(), "meta-data": self.meta_data.encode()}
        if self.network_config is not None:
            out["network-config"] = self.network_config.encode()
        return out


def _ethernet_dhcp(plan: NetworkPlan) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for nic in plan.nics:
        if nic.dhcp4 is None and nic.dhcp6 is None:
            continue
        entry: dict[str, Any] = {"match": {"macaddress": nic.device.mac}}
        entry["dhcp4"] = nic.dhcp4 is not None
        if nic.dhcp4 is not None and nic.dhcp4.search:
            # systemd-networkd ignores DHCP search domains unless told (UseDomains=no);
            # Debian's own cloud images set this too (netplan 90-default.yaml)
            entry["dhcp4-overrides"] = {"use-domains": True}
        entry["dhcp6"] = nic.dhcp6 is not None
        if nic.dhcp6 is not None and nic.dhcp6.search:
            entry["dhcp6-overrides"] = {"use-domains": True}
        out[nic.name] = entry
    return out


def _static_entry(mac: str, cni: CniFields) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "match": {"macaddress": mac},
        "addresses": [str(ip) for ip in cni.ips],
    }
    if cni.gateways:
        entry["routes"] = [{"to": "default", "via": str(gw)} for gw in cni.gateways]
    if cni.nameservers or cni.search:
        ns: dict[str, Any] = {}
        if cni.nameservers:
            ns["addresses"] = [str(a) for a in cni.nameservers]
        if cni.search:
            ns["search"] = list(cni.search)
        entry["nameservers"] = ns
    if cni.mtu is not None:
        entry["mtu"] = cni.mtu
    return entry


def _ethernet_static(plan: NetworkPlan) -> dict[str, dict[str, Any]]:
    """NICs with addresses but no DHCP: SR-IOV/vDPA, and plain-L2 bridge NICs whose
    network-status lists addresses the pod interface does not carry (static IPAM)."""
    out: dict[str, dict[str, Any]] = {}
    mappings = {m.interface: m for m in plan.interfaces}
    for nic in plan.nics:
        mapping = mappings.get(nic.name)
        if nic.dhcp4 is not None or nic.dhcp6 is not None or mapping is None:
            continue
        cni = passthrough_fields(mapping)
        if cni.ips:
            out[nic.name] = _static_entry(nic.device.mac, cni)
    for pt in plan.passthrough:
        if pt.ips and pt.mac is not None:
            out[pt.name] = _static_entry(
                pt.mac,
                CniFields(
                    mac=pt.mac,
                    ips=pt.ips,
                    gateways=pt.gateways,
                    nameservers=pt.nameservers,
                    search=pt.search,
                    mtu=pt.mtu,
                ),
            )
    order = [n.name for n in plan.nics] + [p.name for p in plan.passthrough]
    return {name: out[name] for name in order if name in out}


def generated_network_config(
    plan: NetworkPlan | None, *, with_dhcp: bool = True
) -> dict[str, Any] | None:
    """The netplan v2 document for the NICs of ``plan``, or None when no NIC needs one.

    Only NICs that cannot use DHCP make a document necessary; ``with_dhcp`` adds the
    DHCP NICs beside them so they keep working.
    """
    if plan is None:
        return None
    static = _ethernet_static(plan)
    if not static:
        return None
    ethernets = {**(_ethernet_dhcp(plan) if with_dhcp else {}), **static}
    return {"version": 2, "ethernets": ethernets}


def _user_document(network_data: str, volume: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(network_data)
    except yaml.YAMLError as err:
        raise SpecError(
            [Problem(f"volumes[{volume}].networkData", f"is not valid YAML: {err}")]
        ) from err
    if not isinstance(doc, dict):
        raise SpecError(
            [Problem(f"volumes[{volume}].networkData", "is not a YAML mapping (netplan v1/v2)")]
        )
    return doc


def merge_network_config(
    plan: NetworkPlan | None, network_data: str | None, volume: str = "cloudinit"
) -> str | None:
    """The network-config file for a seed: the user's ``networkData`` merged with ours."""
    if network_data is None or not network_data.strip():
        generated = generated_network_config(plan)
        return None if generated is None else _dump(generated)
    ours = generated_network_config(plan, with_dhcp=False)
    if ours is None:
        return network_data
    doc = _user_document(network_data, volume)
    wrapped = "network" in doc and isinstance(doc["network"], dict)
    net: dict[str, Any] = doc["network"] if wrapped else doc
    if net.get("version") != 2:
        log.warning(
            "volume %r: networkData is not netplan version 2, so the addresses of %s are not "
            "added to it; configure them there",
            volume,
            ", ".join(ours["ethernets"]),
            extra={"event": "network-config-not-merged", "volume": volume},
        )
        return network_data
    ethernets = net.get("ethernets") or {}
    if not isinstance(ethernets, dict):
        raise SpecError([Problem(f"volumes[{volume}].networkData", "ethernets is not a mapping")])
    user_macs = {
        str(e["match"].get("macaddress", "")).lower()
        for e in ethernets.values()
        if isinstance(e, dict) and isinstance(e.get("match"), dict)
    }
    merged = dict(ethernets)
    for name, entry in ours["ethernets"].items():
        if name in merged or entry["match"]["macaddress"] in user_macs:
            continue
        merged[name] = entry
    net = {**net, "ethernets": merged}
    return _dump({**doc, "network": net} if wrapped else net)


def _dump(doc: Mapping[str, Any]) -> str:
    return str(yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False))


def seed_content(spec: VmSpec, volume: Volume, plan: NetworkPlan | None) -> SeedContent:
    """What the seed of the cloud-init ``volume`` holds for ``spec`` with ``plan``."""
    source = volume.source
    if not isinstance(source, CloudInitNoCloud):
        raise VolumeError(f"volume {volume.name!r} is not a cloud-init NoCloud volume")
    meta = {
        "instance-id": spec.uid or f"{spec.name}.{spec.namespace}",
        "local-hostname": spec.hostname or spec.name,
    }
    return SeedContent(
        user_data=source.user_data or "",
        meta_data=_dump(meta),
        network_config=merge_network_config(plan, source.network_data, volume.name),
    )


def build_iso(content: SeedContent, path: Path) -> None:
    """Write ``content`` as a ``cidata`` ISO 9660 image at ``path`` (atomically)."""
    import pycdlib  # noqa: PLC0415 - startup: cloud-init

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    files = content.files()
    for name, iso_path in _FILES:
        data = files.get(name)
        if data is None:
            continue
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path=f"/{name}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        iso.write(str(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        raise VolumeError(f"cannot write the cloud-init seed {path}: {err}") from err
    finally:
        iso.close()
        tmp.unlink(missing_ok=True)


def build_seeds(
    spec: VmSpec, plan: NetworkPlan | None, volumes: ResolvedVolumes
) -> ResolvedVolumes:
    """Build every cloud-init ISO ``volumes`` marks BUILD; returns them marked PRESENT."""
    disks = []
    for disk in volumes.disks:
        file = disk.file
        if file.kind is VolumeKind.CLOUD_INIT and file.state is FileState.BUILD:
            volume = next(v for v in spec.volumes if v.name == file.volume)
            path = Path(file.path)
            build_iso(seed_content(spec, volume, plan), path)
            log.info(
                "cloud-init seed built",
                extra={"event": "cloud-init-built", "volume": volume.name, "path": str(path)},
            )
            file = replace(file, state=FileState.PRESENT, size_bytes=path.stat().st_size)
        disks.append(replace(disk, file=file))
    return replace(volumes, disks=tuple(disks))

"""Readers for the pieces both spec shapes spell the same way.

Called by ``launcher.spec.virtink`` and ``launcher.spec.kubevirt``: object metadata,
the one-of choice (binding, network source, volume source), cloud-init data (plain or
base64), names and MACs. Every reader records problems on the :class:`Fields` it gets
and returns None for a value it could not read.
"""

from __future__ import annotations

import base64
import binascii

from launcher.spec.common import Draft, parse_mac, parse_name
from launcher.spec.model import Binding, Bridge, CloudInitNoCloud, ManagedTap, Masquerade
from launcher.spec.reader import Fields, show

__all__ = [
    "METADATA_IGNORED",
    "pick_one",
    "read_cloud_init",
    "read_mac",
    "read_mtu",
    "MIN_MTU",
    "MAX_MTU",
    "read_metadata",
    "read_name",
]

# Server-managed or scheduling-only metadata: accepted, not acted on.
METADATA_IGNORED = (
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "generateName",
    "generation",
    "managedFields",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
)


def read_metadata(doc: Fields, draft: Draft, *, labels: bool = True) -> None:
    """``metadata``: name (required), namespace, uid, and labels/annotations if asked."""
    meta = doc.mapping("metadata", required=True)
    if meta is None:
        return
    draft.name = meta.string("name", required=True)
    draft.namespace = meta.string("namespace") or "default"
    draft.uid = meta.string("uid")
    if labels:
        draft.labels = meta.string_map("labels")
        draft.annotations = meta.string_map("annotations")
    else:
        meta.ignore("labels", "annotations")
    meta.ignore(*METADATA_IGNORED)
    meta.finish()


def pick_one(fields: Fields, choices: tuple[str, ...], what: str) -> tuple[str, Fields] | None:
    """The single present key of ``choices`` and its mapping.

    None when none is present (the caller decides whether that is a default or a
    problem) and when several are (recorded as a problem here).
    """
    present = [key for key in choices if fields.present(key)]
    fields.ignore(*choices)  # a null choice is simply absent
    if len(present) > 1:
        fields.problems.add(
            fields.path,
            f"has {len(present)} {what}s ({', '.join(present)}); exactly one is allowed",
        )
        return None
    if not present:
        return None
    inner = fields.marker(present[0])
    return None if inner is None else (present[0], inner)


def read_name(fields: Fields) -> str | None:
    """The required ``name`` of an interface, network, disk or volume."""
    text = fields.string("name", required=True)
    return None if text is None else fields.convert("name", text, parse_name)


#: smallest MTU every IPv4 host must accept (RFC 791); IPv6's 1280 is checked by the plan,
#: which knows whether the interface carries IPv6
MIN_MTU = 576
#: largest MTU of a Linux bridge, tap and QEMU virtio-net ``host_mtu``
MAX_MTU = 65535


def read_mtu(fields: Fields, binding: Binding) -> int | None:
    """An interface's ``mtu`` override, or None (absent, or a problem was recorded)."""
    value = fields.integer("mtu")
    if value is None:
        return None
    path = fields.at("mtu")
    if value < MIN_MTU:
        fields.problems.add(
            path, f"{value} is below {MIN_MTU}, the smallest MTU every IPv4 host must accept"
        )
        return None
    if value > MAX_MTU:
        fields.problems.add(
            path, f"{value} is above {MAX_MTU}, the largest MTU of a bridge, tap or virtio NIC"
        )
        return None
    if not isinstance(binding, Bridge | Masquerade | ManagedTap):
        fields.problems.add(
            path,
            f"an MTU is set for bridge, masquerade and managedtap interfaces, not "
            f"{binding.kind.value} "
            "(the device's MTU is the CNI's)",
        )
        return None
    return value


def read_mac(fields: Fields, key: str) -> str | None:
    """The normalized MAC at ``key``, or None (absent, or a problem was recorded)."""
    text = fields.string(key)
    return None if text is None else fields.convert(key, text, parse_mac)


def _text_or_base64(fields: Fields, key: str) -> str | None:
    plain = fields.string(key, nonempty=False)
    encoded = fields.string(f"{key}Base64", nonempty=False)
    if plain is not None and encoded is not None:
        fields.problems.add(fields.at(f"{key}Base64"), f"{key} and {key}Base64 are both set")
        return None
    if encoded is None:
        return plain
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, ValueError):
        fields.problems.add(
            fields.at(f"{key}Base64"), f"{show(encoded)} is not base64-encoded UTF-8 text"
        )
        return None


def read_cloud_init(fields: Fields, secret_keys: tuple[str, ...]) -> CloudInitNoCloud | None:
    """``userData``/``userDataBase64``/``networkData``/``networkDataBase64``."""
    fields.unsupported(
        {key: "secrets are not supported: inline the data or mount it" for key in secret_keys}
    )
    user = _text_or_base64(fields, "userData")
    net = _text_or_base64(fields, "networkData")
    fields.finish()
    return CloudInitNoCloud(user_data=user, network_data=net)

"""Frozen dataclasses, enums and IP values as plain JSON-able data.

Called by ``virt-launcher plan`` (and later by the status endpoint) to print the
normalized model: dataclasses become objects with their field names, enums their
values, IP addresses/networks their text, tuples lists. A dataclass stored in a field
typed as a union of dataclasses (``Binding``, ``NetworkSource``, ``VolumeSource``) gets
a ``"type"`` key naming its class in snake case, unless it already carries ``kind``,
so the JSON says which variant it is.

The privileged helper's codec (:func:`launcher.privsep.codec.encode_value`) walks the
same kinds of values but is kept apart on purpose: its output must be exactly what its
strict decoder rebuilds to an equal value, so it tags *every* dataclass with its class
name (the decoder checks it), refuses sets (no decoder type for them), takes only
``Path`` and ``dict`` (what the decoder makes) and fails with ``CodecError``; this
module's output is for people (``plan``, ``/status``): only union fields tagged, in
snake case, sets sorted, any mapping or path. Only the IP types are shared.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import re
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["JsonValue", "to_jsonable", "IP_TYPES"]

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]

#: The ipaddress types both walkers write as their text.
IP_TYPES: tuple[type[Any], ...] = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def to_jsonable(value: object) -> JsonValue:
    """``value`` as JSON-able data; a ``TypeError`` names any type it cannot convert."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, (*IP_TYPES, PurePath)):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        tagged = _tagged_fields(type(value))
        out: dict[str, JsonValue] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            converted = to_jsonable(item)
            if f.name in tagged and isinstance(converted, dict) and "kind" not in converted:
                converted = {"type": _snake(type(item).__name__), **converted}
            out[f.name] = converted
        return out
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [to_jsonable(v) for v in items]
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be turned into JSON")


@functools.cache
def _tagged_fields(cls: type) -> frozenset[str]:
    """Fields whose declared type is a union of two or more dataclasses."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return frozenset()
    tagged = set()
    for name, hint in hints.items():
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
            if len(members) >= 2:
                tagged.add(name)
    return frozenset(tagged)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

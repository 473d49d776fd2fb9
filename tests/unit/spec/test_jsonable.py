"""launcher.jsonable: the normalized model as JSON-able data (what `plan` prints)."""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import pytest

from launcher.jsonable import to_jsonable
from launcher.spec import (
    CloudInitNoCloud,
    Interface,
    Masquerade,
    MultusNetwork,
    Network,
    Port,
    Protocol,
    Volume,
    load,
)


def test_union_fields_are_tagged_unless_they_carry_kind() -> None:
    assert to_jsonable(Network("n", MultusNetwork("ns/nad"))) == {
        "name": "n",
        "source": {"type": "multus_network", "network_name": "ns/nad", "default": False},
    }
    assert to_jsonable(Volume("ci", CloudInitNoCloud(user_data="x"))) == {
        "name": "ci",
        "source": {"type": "cloud_init_no_cloud", "user_data": "x", "network_data": None},
    }
    iface = to_jsonable(Interface("pod", Masquerade(ports=(Port(80, Protocol.UDP, "dns"),))))
    assert isinstance(iface, dict)
    assert iface["binding"] == {
        "cidr4": "10.0.2.0/30",
        "cidr6": "fd10:0:2::/120",
        "ports": [{"port": 80, "protocol": "UDP", "name": "dns"}],
        "port_ranges": [],
        "kind": "masquerade",
    }


def test_scalars_enums_addresses_and_containers() -> None:
    class Colour(enum.Enum):
        RED = 1

    @dataclass(frozen=True)
    class Thing:
        addr: ipaddress.IPv6Address
        path: Path
        tags: frozenset[str]
        data: dict[str, bytes]
        colour: Colour

    out = to_jsonable(
        Thing(
            ipaddress.IPv6Address("fe80::1"),
            Path("/x"),
            frozenset({"b", "a"}),
            {"k": b"\x01"},
            Colour.RED,
        )
    )
    assert out == {
        "addr": "fe80::1",
        "path": "/x",
        "tags": ["a", "b"],
        "data": {"k": "01"},
        "colour": 1,
    }


@dataclass(frozen=True)
class _Inner:
    x: int


@dataclass(frozen=True)
class _Outer:
    inner: _Inner
    path: PurePosixPath
    labels: Mapping[str, int]
    ids: set[int]


def test_what_the_helper_codec_refuses_is_printed() -> None:
    # unlike launcher.privsep.codec.encode_value: a plain dataclass field is not tagged,
    # any mapping, any path and sets are printed
    out = to_jsonable(_Outer(_Inner(1), PurePosixPath("/p"), MappingProxyType({"a": 1}), {2, 1}))
    assert out == {"inner": {"x": 1}, "path": "/p", "labels": {"a": 1}, "ids": [1, 2]}


def test_unknown_type_names_itself() -> None:
    with pytest.raises(TypeError, match="object value <object object at"):
        to_jsonable(object())


def test_every_example_round_trips_through_json() -> None:
    for path in (Path(__file__).parents[3] / "examples").glob("*.yaml"):
        data = to_jsonable(load(path))
        assert json.loads(json.dumps(data)) == data

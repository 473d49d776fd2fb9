"""The helper's request codec: typed requests round-trip; anything else is refused."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import pytest

from launcher.network import ApplyResult, PodState, plan
from launcher.privsep.codec import (
    HEADER,
    MAX_MESSAGE,
    Apply,
    Cleanup,
    CodecError,
    Discover,
    OpenSocket,
    OpenTap,
    Recover,
    Request,
    SignalProcess,
    answer_type,
    decode_request,
    decode_value,
    encode_request,
    encode_value,
)
from launcher.spec.model import Masquerade
from tests.unit.network.helpers import pod_state, vm_spec

STATE = Path("/var/run/virt-launcher")


def body(request: Request) -> bytes:
    framed = encode_request(request)
    (size,) = HEADER.unpack(framed[: HEADER.size])
    assert size == len(framed) - HEADER.size
    return framed[HEADER.size :]


def raw(op: object, args: object) -> bytes:
    return json.dumps({"op": op, "args": args}).encode()


@pytest.mark.parametrize("binding", [None, Masquerade()])
def test_a_real_plan_round_trips_equal(binding: Masquerade | None) -> None:
    p = plan(vm_spec(binding) if binding else vm_spec(), pod_state())
    for request in (Apply(p, STATE), Cleanup(p, STATE)):
        assert decode_request(body(request)) == request


@pytest.mark.parametrize(
    "request_",
    [
        Discover(STATE),
        Recover(STATE),
        OpenTap("vltap1", 2),
        SignalProcess(1234, 9),
        OpenSocket("udp4", "vlbr1", 67),
        OpenSocket("udp6", "vlbr1", 547),
        OpenSocket("packet"),
        OpenSocket("icmp6"),
    ],
)
def test_small_requests_round_trip(request_: Request) -> None:
    assert decode_request(body(request_)) == request_


def test_answers_decode_to_their_types() -> None:
    pod = pod_state()
    assert decode_value(answer_type("discover"), encode_value(pod)) == pod
    assert isinstance(decode_value(answer_type("discover"), encode_value(pod)), PodState)
    result = ApplyResult(changes=3)
    assert decode_value(answer_type("apply"), encode_value(result)) == result
    assert decode_value(answer_type("cleanup"), None) is None
    assert decode_value(answer_type("recover"), True) is True
    with pytest.raises(CodecError, match="is not a boolean"):
        decode_value(answer_type("recover"), 1)


def _apply_args() -> dict[str, Any]:
    args: dict[str, Any] = encode_value(Apply(plan(vm_spec(), pod_state()), STATE))
    del args["type"]
    return args


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"\x80\x04\x95", "not JSON"),  # a pickle: never unpickled
        (b"[1, 2]", 'exactly "op" and "args"'),
        (json.dumps({"op": "open_tap"}).encode(), 'exactly "op" and "args"'),
        (json.dumps({"op": "open_tap", "args": {}, "x": 1}).encode(), 'exactly "op"'),
        (raw("exec", {"argv": ["sh"]}), "op: 'exec' is not one of"),
        (raw(["apply"], {}), "is not one of"),
        (raw("open_tap", ["vltap0", 1]), "is not a OpenTap object"),
        (raw("open_tap", {"name": "vltap0", "queues": "1"}), "queues: '1' is not an integer"),
        (raw("open_tap", {"name": "vltap0", "queues": True}), "is not an integer"),
        (raw("open_tap", {"queues": 1}), "name: missing"),
        (raw("open_tap", {"name": "t", "queues": 1, "mode": 7}), "unknown field(s) mode"),
        (raw("open_socket", {"kind": "raw4", "interface": "x"}), "kind: 'raw4' is not one of"),
        (raw("discover", {"state_dir": 5}), "state_dir: 5 is not a Path"),
        (raw("discover", {"state_dir": "/s", "netns": "other"}), "unknown field(s) netns"),
    ],
)
def test_anything_else_is_refused_naming_what(message: bytes, expected: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_request(message)
    assert expected in str(err.value)


def test_a_plan_with_a_wrong_nested_value_is_refused_with_its_path() -> None:
    args = _apply_args()
    args["plan"]["nics"][0]["tap"]["mtu"] = "9000"
    with pytest.raises(CodecError, match=r"args.plan.nics\[0\].tap.mtu: '9000' is not an integer"):
        decode_value(Apply, {**args, "type": "Apply"}, "args")
    args = _apply_args()
    args["plan"]["nics"][0]["bridge"]["addresses"] = ["not-an-address"]
    with pytest.raises(CodecError, match="addresses"):
        decode_request(raw("apply", args))
    args = _apply_args()
    args["plan"]["nics"][0]["tap"]["type"] = "BridgeLink"  # a class of another field
    with pytest.raises(CodecError, match=r"tap\.type"):
        decode_request(raw("apply", args))
    args = _apply_args()
    args["plan"]["nics"][0]["extra"] = 1
    with pytest.raises(CodecError, match="unknown field"):
        decode_request(raw("apply", args))


def test_a_value_the_codec_does_not_know_is_not_sent() -> None:
    with pytest.raises(CodecError, match="set value cannot be sent"):
        encode_value({1, 2})


def test_every_dataclass_carries_its_class_name() -> None:
    # unlike launcher.jsonable (union fields only, snake case): the decoder checks "type"
    assert encode_value(OpenTap("vltap0", 2)) == {"name": "vltap0", "queues": 2, "type": "OpenTap"}
    assert encode_value({"a": (Recover(STATE),)}) == {
        "a": [{"state_dir": str(STATE), "type": "Recover"}]
    }


@pytest.mark.parametrize(
    "value", [frozenset({1}), PurePosixPath("/x"), MappingProxyType({"a": 1})], ids=repr
)
def test_what_the_decoder_cannot_rebuild_is_not_sent(value: object) -> None:
    # launcher.jsonable prints each of these; the helper's decoder makes none of them
    with pytest.raises(CodecError, match=f"a {type(value).__name__} value cannot be sent"):
        encode_value(value)


def test_too_long_a_message_is_not_framed() -> None:
    with pytest.raises(CodecError, match="longer than"):
        encode_request(OpenTap("x" * (MAX_MESSAGE + 1)))

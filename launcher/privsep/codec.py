"""The typed request codec between the launcher and its privileged helper.

Used by both ends of :mod:`launcher.privsep.helper`. The helper keeps capabilities the
launcher gave up, so what it reads must never be able to run code in it: no pickle.
A message is a 4-byte big-endian length and a JSON object; a request is one of the
:data:`REQUESTS` dataclasses, ``{"op": <name>, "args": {...}}``, decoded strictly
against its type hints (:func:`decode_value`): an unknown op or field, a missing
field, a value of the wrong type, an extra key, a message too long or not JSON — each
is a :class:`CodecError` naming the path and the value, and the helper answers it
with an error without acting on it. Answers (``{"ok": value}`` or
``{"error": text}``) are decoded the same way against the type the request expects;
file descriptors travel beside the message as SCM_RIGHTS.

Values: ``None``, bool, int, float, str, enums (their value), IP addresses, networks
and interfaces (their text), ``Path`` (text), bytes (hex), tuples, ``dict[str, X]``,
``X | None``, and frozen dataclasses (objects; a field typed as a union of dataclasses
carries ``"type"``: the class name).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from launcher.errors import LauncherError
from launcher.jsonable import IP_TYPES

if TYPE_CHECKING:  # imported when a plan is first decoded (the helper stays small till then)
    from launcher.network import NetworkPlan

__all__ = [
    "CodecError",
    "Apply",
    "Cleanup",
    "Recover",
    "Discover",
    "OpenTap",
    "OpenSocket",
    "SignalProcess",
    "Request",
    "REQUESTS",
    "SocketKind",
    "encode_request",
    "decode_request",
    "encode_value",
    "decode_value",
    "answer_type",
    "frame",
    "HEADER",
    "MAX_MESSAGE",
]

HEADER = struct.Struct(">I")
#: The largest message either end accepts (a plan with many NICs is a few hundred kB).
MAX_MESSAGE = 4 << 20
MAX_FDS = 16


class CodecError(LauncherError):
    """A message that is not one of the typed requests or answers."""


SocketKind = Literal["udp4", "udp6", "packet", "icmp6", "link"]


@dataclass(frozen=True, slots=True)
class Discover:
    """``launcher.network.discover`` of the pod (answer: PodState)."""

    state_dir: Path


@dataclass(frozen=True, slots=True)
class Apply:
    """``launcher.network.apply`` of a plan (answer: ApplyResult)."""

    plan: NetworkPlan
    state_dir: Path


@dataclass(frozen=True, slots=True)
class Cleanup:
    """``launcher.network.cleanup`` of a plan's NICs (answer: None)."""

    plan: NetworkPlan
    state_dir: Path


@dataclass(frozen=True, slots=True)
class Recover:
    """``launcher.network.recover``: roll back an unfinished set-up (answer: bool)."""

    state_dir: Path


@dataclass(frozen=True, slots=True)
class OpenTap:
    """Open an existing tap ``queues`` times (answer: None, and ``queues`` fds)."""

    name: str
    queues: int = 1


@dataclass(frozen=True, slots=True)
class OpenSocket:
    """A DHCP/RA server's privileged socket (:mod:`dhcp.sockets`; answer: None + 1 fd)."""

    kind: SocketKind
    interface: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class SignalProcess:
    """Send ``signum`` (SIGCONT, SIGTERM or SIGKILL) to ``pid``, a child of the launcher
    (the VMM, which runs as another user: answer None)."""

    pid: int
    signum: int


Request = Discover | Apply | Cleanup | Recover | OpenTap | OpenSocket | SignalProcess
#: Every request the helper accepts, by op name, with the type of its answer.
#: (An answer type named by a string is a ``launcher.network`` name, imported when used.)
REQUESTS: dict[str, tuple[type[Any], Any]] = {
    "discover": (Discover, "PodState"),
    "apply": (Apply, "ApplyResult"),
    "cleanup": (Cleanup, None),
    "recover": (Recover, bool),
    "open_tap": (OpenTap, None),
    "open_socket": (OpenSocket, None),
    "signal": (SignalProcess, None),
}
_OPS = {cls: op for op, (cls, _) in REQUESTS.items()}


# --------------------------------------------------------------------------- encode


def encode_value(value: object) -> Any:
    """``value`` as JSON data this module's decoder reads back to an equal value.

    Not :func:`launcher.jsonable.to_jsonable` (which prints the plan for people): every
    dataclass carries its class name, sets, non-``dict`` mappings and non-``Path`` paths
    are refused — exactly what :func:`decode_value` rebuilds, nothing it cannot."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return encode_value(value.value)
    if isinstance(value, (*IP_TYPES, Path)):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["type"] = type(value).__name__
        return out
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [encode_value(v) for v in value]
    raise CodecError(f"a {type(value).__name__} value cannot be sent to the helper")


def frame(data: Any) -> bytes:
    """One message: length + JSON."""
    body = json.dumps(data, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise CodecError(f"a {len(body)}-byte message is longer than {MAX_MESSAGE}")
    return HEADER.pack(len(body)) + body


def encode_request(request: Request) -> bytes:
    """The framed message for ``request``."""
    op = _OPS.get(type(request))
    if op is None:
        raise CodecError(f"{type(request).__name__} is not a helper request")
    args = encode_value(request)
    del args["type"]
    return frame({"op": op, "args": args})


# --------------------------------------------------------------------------- decode


def decode_request(body: bytes) -> Request:
    """The request in ``body`` (a message without its length); CodecError for anything
    that is not exactly one of :data:`REQUESTS`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise CodecError(f"request is not JSON: {err}") from err
    if not isinstance(data, dict) or set(data) != {"op", "args"}:
        raise CodecError('request must be an object with exactly "op" and "args"')
    op = data["op"]
    if not isinstance(op, str) or op not in REQUESTS:
        raise CodecError(f"op: {op!r} is not one of {', '.join(REQUESTS)}")
    cls = REQUESTS[op][0]
    args = data["args"]
    if isinstance(args, dict):
        args = {**args, "type": cls.__name__}
    request: Request = decode_value(cls, args, op)
    return request


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS:
        try:
            _HINTS[cls] = typing.get_type_hints(cls)
        except NameError:  # a plan type: launcher.network is imported on first use only
            import launcher.network  # noqa: PLC0415 - startup: helper imports on use

            wanted = ("ApplyResult", "NetworkPlan", "PodState")
            names = {n: getattr(launcher.network, n) for n in wanted}
            _HINTS[cls] = typing.get_type_hints(cls, localns=names)
    return _HINTS[cls]


def answer_type(op: str) -> Any:
    """The type of ``op``'s answer value."""
    hint = REQUESTS[op][1]
    if isinstance(hint, str):
        import launcher.network  # noqa: PLC0415 - startup: helper imports on use

        return getattr(launcher.network, hint)
    return hint


def _fail(path: str, value: object, what: str) -> CodecError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return CodecError(f"{path}: {shown} is not {what}")


def decode_value(hint: Any, value: object, path: str = "value") -> Any:
    """``value`` (JSON data) as an instance of ``hint``; CodecError names ``path``."""
    if hint is None or hint is type(None):
        if value is not None:
            raise _fail(path, value, "null")
        return None
    if hint is Any:
        raise CodecError(f"{path}: untyped values are not accepted")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(typing.get_args(hint), value, path)
    if origin is Literal:
        if value not in typing.get_args(hint) or isinstance(value, bool):
            raise _fail(path, value, f"one of {typing.get_args(hint)}")
        return value
    if origin is tuple:
        return _decode_tuple(typing.get_args(hint), value, path)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if key_type is not str or not isinstance(value, dict):
            raise _fail(path, value, "an object")
        return {k: decode_value(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if not isinstance(hint, type):
        raise CodecError(f"{path}: the type {hint!r} cannot be decoded")
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, value, path)
    return _decode_scalar(hint, value, path)


def _decode_union(members: tuple[Any, ...], value: object, path: str) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise _fail(path, value, " or ".join(_name(m) for m in members))
    if isinstance(value, dict) and "type" in value:
        for member in members:
            if dataclasses.is_dataclass(member) and _name(member) == value["type"]:
                return decode_value(member, value, path)
    errors = []
    for member in members:
        if member is type(None):
            continue
        try:
            return decode_value(member, value, path)
        except CodecError as err:
            errors.append(str(err))
    raise CodecError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches no type")


def _decode_tuple(args: tuple[Any, ...], value: object, path: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise _fail(path, value, "a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(decode_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise _fail(path, value, f"a list of {len(args)}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(decode_value(a, v, f"{path}[{i}]") for i, (a, v) in pairs)


def _decode_scalar(hint: type[Any], value: object, path: str) -> Any:
    """bool, int, float, str, bytes (hex), enums, IP values and paths (their text)."""
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(path, value, "a boolean")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(path, value, "an integer")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _fail(path, value, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(path, value, "a string")
        return value
    if hint is bytes:
        try:
            return bytes.fromhex(value) if isinstance(value, str) else _raise()
        except (ValueError, TypeError):
            raise _fail(path, value, "hex bytes") from None
    if issubclass(hint, enum.Enum) or hint in IP_TYPES or hint is Path:
        if not issubclass(hint, enum.Enum) and not isinstance(value, str):
            raise _fail(path, value, f"a {hint.__name__}")
        try:
            return hint(value)
        except (ValueError, TypeError):
            raise _fail(path, value, f"a {hint.__name__}") from None
    raise CodecError(f"{path}: the type {hint.__name__} cannot be decoded")


def _raise() -> bytes:
    raise TypeError


def _name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _decode_dataclass(cls: type[Any], value: object, path: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(path, value, f"a {cls.__name__} object")
    if value.get("type") != cls.__name__:
        raise _fail(f"{path}.type", value.get("type"), cls.__name__)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields) - {"type"})
    if unknown:
        raise CodecError(f"{path}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodecError(f"{path}.{name}: missing")
            continue
        kwargs[name] = decode_value(hints[name], value[name], f"{path}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise CodecError(f"{path}: not a valid {cls.__name__}: {err}") from err

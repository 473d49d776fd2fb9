"""Parser for cloud-hypervisor's ``--event-monitor`` stream, turned into LifecycleEvents.

cloud-hypervisor writes each event as a *pretty-printed* JSON object followed by a blank
line (``event_monitor`` crate: ``serde_json::to_string_pretty`` then ``"\\n\\n"``)::

    {
      "timestamp": {"secs": 0, "nanos": 29000000},
      "source": "vm",
      "event": "booted",
      "properties": null
    }

so objects span several lines and are split on JSON boundaries, not on newlines.
``timestamp`` is the time since the VMM started. :class:`EventParser` is fed raw bytes
by :mod:`hypervisor.cloud_hypervisor.adapter` (which reads the pipe) and returns complete
events; a malformed object raises :class:`~hypervisor.errors.HypervisorError` naming it.
"""

from __future__ import annotations

import json
from typing import Any

from hypervisor.base import LifecycleEvent
from hypervisor.errors import HypervisorError
from hypervisor.machine import VmState

__all__ = ["EventParser", "STATE_OF_EVENT", "to_event"]

#: (source, event) pairs that change the VM state. ``vm/shutdown`` is not here: a guest
#: reboot also emits it (shutdown, then boot again); the terminal state is decided when
#: the VMM process exits.
STATE_OF_EVENT: dict[tuple[str, str], VmState] = {
    ("vm", "booted"): VmState.RUNNING,
    ("vm", "paused"): VmState.PAUSED,
    ("vm", "resumed"): VmState.RUNNING,
    ("guest", "panic"): VmState.FAILED,
}

_MAX_BUFFER = 1 << 20  # one event is a few hundred bytes; more than 1 MiB unparsed is garbage


def _timestamp(value: Any) -> float:
    if isinstance(value, dict) and isinstance(value.get("secs"), int):
        nanos = value.get("nanos", 0)
        return float(value["secs"]) + (nanos if isinstance(nanos, int) else 0) / 1e9
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise HypervisorError(
        f"event-monitor timestamp {value!r} is neither {{secs, nanos}} nor a number"
    )


def to_event(obj: Any) -> LifecycleEvent:
    """One decoded event-monitor JSON object as a LifecycleEvent."""
    if not isinstance(obj, dict):
        raise HypervisorError(f"event-monitor object {obj!r} is not a JSON object")
    source, name = obj.get("source"), obj.get("event")
    if not isinstance(source, str) or not isinstance(name, str):
        raise HypervisorError(f"event-monitor object {obj!r} lacks string source/event fields")
    props = obj.get("properties") or {}
    if not isinstance(props, dict):
        raise HypervisorError(f"event-monitor properties {props!r} are not a JSON object")
    return LifecycleEvent(
        name=name,
        source=source,
        timestamp=_timestamp(obj.get("timestamp", 0)),
        state=STATE_OF_EVENT.get((source, name)),
        details={str(k): str(v) for k, v in props.items()},
    )


class EventParser:
    """Incremental parser: :meth:`feed` bytes as they arrive, get the complete events back."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending = b""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[LifecycleEvent]:
        """Append ``data``; return every event now complete, in stream order."""
        raw = self._pending + data
        try:
            text = raw.decode()
            self._pending = b""
        except UnicodeDecodeError as err:
            if err.start < len(raw) - 3:  # not just a split multi-byte character at the end
                raise HypervisorError(
                    f"event-monitor stream has invalid UTF-8 at byte {err.start}"
                ) from err
            text, self._pending = raw[: err.start].decode(), raw[err.start :]
        self._buffer += text
        events: list[LifecycleEvent] = []
        while True:
            stripped = self._buffer.lstrip()
            if not stripped:
                self._buffer = ""
                break
            try:
                obj, end = self._decoder.raw_decode(stripped)
            except json.JSONDecodeError as err:
                # Pretty-printed JSON never holds a blank line, so one ends every object.
                complete = "\n\n" in stripped
                if complete or len(stripped) > _MAX_BUFFER or not stripped.startswith("{"):
                    raise HypervisorError(
                        f"event-monitor stream is not JSON objects near {stripped[:80]!r}"
                    ) from err
                self._buffer = stripped  # incomplete object: wait for more bytes
                break
            events.append(to_event(obj))
            self._buffer = stripped[end:]
        return events

"""The event-monitor parser against cloud-hypervisor's real output format."""

from __future__ import annotations

import json

import pytest

from hypervisor.cloud_hypervisor.events import EventParser
from hypervisor.errors import HypervisorError
from hypervisor.machine import VmState


def record(
    source: str, event: str, secs: int = 0, nanos: int = 0, props: dict[str, str] | None = None
) -> bytes:
    """One event exactly as event_monitor writes it: to_string_pretty + blank line."""
    obj = {
        "timestamp": {"secs": secs, "nanos": nanos},
        "source": source,
        "event": event,
        "properties": props,
    }
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n\n").encode()


STREAM = (
    record("vmm", "starting")
    + record("vm", "booting", 0, 5_000_000)
    + record("vm", "booted", 1, 250_000_000)
    + record("virtio-device", "activated", 1, 300_000_000, {"id": "_net1"})
    + record("vm", "paused", 2)
    + record("vm", "resumed", 3)
    + record("guest", "panic", 4, 0, {"type": "crash-loaded"})
)


def test_whole_stream() -> None:
    events = EventParser().feed(STREAM)
    assert [(e.source, e.name) for e in events] == [
        ("vmm", "starting"),
        ("vm", "booting"),
        ("vm", "booted"),
        ("virtio-device", "activated"),
        ("vm", "paused"),
        ("vm", "resumed"),
        ("guest", "panic"),
    ]
    assert events[2].timestamp == pytest.approx(1.25)
    assert [e.state for e in events] == [
        None,
        None,
        VmState.RUNNING,
        None,
        VmState.PAUSED,
        VmState.RUNNING,
        VmState.FAILED,
    ]
    assert events[3].details == {"id": "_net1"}


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_stream_split_into_chunks(chunk: int) -> None:
    parser = EventParser()
    events = []
    for i in range(0, len(STREAM), chunk):
        events += parser.feed(STREAM[i : i + chunk])
    assert len(events) == 7
    assert events[-1].details == {"type": "crash-loaded"}


def test_multibyte_character_split_across_reads() -> None:
    data = record("vm", "booted", props={"note": "naïve ✓"})
    cut = data.index("✓".encode()) + 1
    parser = EventParser()
    assert parser.feed(data[:cut]) == []
    (event,) = parser.feed(data[cut:])
    assert event.details["note"] == "naïve ✓"


def test_compact_objects_on_single_lines_also_parse() -> None:
    data = b'{"timestamp":{"secs":0,"nanos":1},"source":"vm","event":"booted"}\n'
    assert EventParser().feed(data)[0].state is VmState.RUNNING


def test_garbage_is_an_error_naming_it() -> None:
    with pytest.raises(HypervisorError, match="not JSON objects near 'garbage"):
        EventParser().feed(b"garbage\n\n")


def test_broken_object_before_blank_line_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="not JSON objects"):
        EventParser().feed(b'{\n  "source": "vm",\n  "event": \n}\n\n')


def test_object_without_event_field_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="lacks string source/event"):
        EventParser().feed(b'{"source": "vm"}\n\n')


def test_incomplete_object_waits() -> None:
    parser = EventParser()
    assert parser.feed(record("vm", "booted")[:-10]) == []

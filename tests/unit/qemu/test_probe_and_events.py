"""Unit tests for the accelerator probe's pure parts, QMP event mapping and exit causes."""

from __future__ import annotations

import io
import json
import logging
import signal
from pathlib import Path

import pytest

from hypervisor.base import Hypervisor
from hypervisor.errors import HypervisorError
from hypervisor.machine import VmState
from hypervisor.qemu import probe
from hypervisor.qemu.adapter import Qemu, describe_exit, map_event, serial_to_stdout
from hypervisor.qemu.probe import AccelChoice, choose_accel, probe_image
from hypervisor.qemu.qmp import QmpEvent


def test_probe_image_is_64k_with_reset_vector_far_jump_to_code() -> None:
    image = probe_image()
    assert len(image) == 0x10000
    # jmp f000:f000 at the reset vector (physical 0xffff0)
    assert image[0xFFF0:0xFFF5] == bytes([0xEA, 0x00, 0xF0, 0x00, 0xF0])
    # the code starts with cli; lgdt and ends its 64-bit part with out 0xf4 (isa-debug-exit)
    assert image[0xF000] == 0xFA
    assert bytes([0xB0, 0x2A, 0xE6, 0xF4]) in image[0xF000:0xF100]
    # std; rep movsq: the Linux decompressor's backwards copy is what the probe measures
    assert bytes([0xFD, 0xF3, 0x48, 0xA5]) in image[0xF000:0xF100]


async def test_forced_modes_do_not_probe(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hypervisor.qemu.probe")
    for mode in ("kvm", "tcg"):
        choice = await choose_accel(mode, binary="/nonexistent/qemu", cache_dir=None)
        assert choice.accel == mode
        assert "forced by --accel" in choice.reason
    assert "QEMU accelerator: kvm" in caplog.text


async def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="'hvf'"):
        await choose_accel("hvf", cache_dir=None)


async def test_cached_result_for_this_boot_skips_the_probe(tmp_path: Path) -> None:
    key = probe._cache_key("/nonexistent/qemu")
    cached = AccelChoice("kvm", "KVM ran the probe guest in 0.05s", 0.05, 0.3)
    probe._write_cache(tmp_path / "qemu-accel.json", key, cached)
    # the binary does not exist, so a probe would raise: the cache must answer
    choice = await choose_accel(binary="/nonexistent/qemu", cache_dir=tmp_path)
    assert choice.accel == "kvm" and choice.cached
    assert choice.kvm_seconds == 0.05


async def test_cache_from_another_boot_is_ignored(tmp_path: Path) -> None:
    key = probe._cache_key("/nonexistent/qemu")
    stale = {**key, "boot_id": "00000000-another-boot"}
    (tmp_path / "qemu-accel.json").write_text(
        json.dumps({"key": stale, "choice": {"accel": "kvm", "reason": "old"}})
    )
    with pytest.raises(HypervisorError, match="/nonexistent/qemu"):
        await choose_accel(binary="/nonexistent/qemu", cache_dir=tmp_path)


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"key": 1}', '{"key": {}, "choice": {"accel": "x"}}']
)
def test_corrupt_cache_reads_as_missing(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    assert probe._read_cache(path, {"boot_id": "b", "binary": "q"}) is None


def ev(name: str, **data: object) -> QmpEvent:
    return QmpEvent(name, 1700000000.5, data)


@pytest.mark.parametrize(
    ("qmp", "name", "state"),
    [
        ("SHUTDOWN", "shutdown", VmState.SHUTDOWN),
        ("RESET", "reboot", None),
        ("STOP", "paused", VmState.PAUSED),
        ("RESUME", "resumed", VmState.RUNNING),
        ("GUEST_PANICKED", "panic", VmState.FAILED),
    ],
)
def test_event_mapping(qmp: str, name: str, state: VmState | None) -> None:
    mapped = map_event(ev(qmp))
    assert mapped is not None
    assert (mapped.name, mapped.state, mapped.source) == (name, state, "qmp")
    assert mapped.timestamp == 1700000000.5


def test_shutdown_details_are_strings() -> None:
    mapped = map_event(ev("SHUTDOWN", guest=True, reason="guest-shutdown"))
    assert mapped is not None
    assert mapped.details == {"guest": "true", "reason": "guest-shutdown"}


def test_device_deleted_only_for_devices() -> None:
    mapped = map_event(ev("DEVICE_DELETED", device="net1", path="/machine/peripheral/net1"))
    assert mapped is not None and mapped.name == "device-removed"
    assert mapped.details["device"] == "net1"
    assert map_event(ev("DEVICE_DELETED", path="/machine/peripheral-anon/x")) is None


def test_other_events_are_ignored() -> None:
    assert map_event(ev("RTC_CHANGE", offset=1)) is None
    assert map_event(ev("NIC_RX_FILTER_CHANGED")) is None


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL, "") == "qemu was killed by SIGKILL"
    assert describe_exit(0, "warn") == "qemu exited with code 0"
    tail = "first\nqemu-system-x86_64: -netdev tap: could not open /dev/net/tun\n\n"
    assert describe_exit(1, tail) == (
        "qemu exited with code 1: qemu-system-x86_64: -netdev tap: could not open /dev/net/tun"
    )
    assert describe_exit(1, "") == "qemu exited with code 1"


def test_serial_to_stdout_prefixes_each_line() -> None:
    out = io.StringIO()
    forward = serial_to_stdout("[vm1] ", out)
    forward("Linux version 6.1")
    forward("")
    assert out.getvalue() == "[vm1] Linux version 6.1\n[vm1] \n"


def test_qemu_satisfies_the_hypervisor_protocol() -> None:
    qemu: Hypervisor = Qemu()  # mypy checks the structure; isinstance checks the members
    assert isinstance(qemu, Hypervisor)
    assert qemu.kind == "qemu"
    assert qemu.state is VmState.CREATED
    assert qemu.pid is None

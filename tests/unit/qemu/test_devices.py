"""The QEMU NIC-model probe: ``-device help`` of the installed binary, parsed and cached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisor.errors import HypervisorError
from hypervisor.qemu import devices
from hypervisor.qemu.devices import NIC_MODELS, parse_device_help, qemu_nic_models

#: Every QEMU x86 build Debian ships (7.2 in bookworm) has these; igb came with 8.0.
ALWAYS = {"virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"}


@pytest.fixture(autouse=True)
def _no_memo() -> Iterator[None]:
    devices.forget()
    yield
    devices.forget()


def test_parse_device_help_names_and_aliases() -> None:
    text = (
        "Network devices:\n"
        'name "e1000", bus PCI, alias "e1000-82540em", desc "Intel Gigabit Ethernet"\n'
        'name "virtio-net-pci", bus PCI, alias "virtio-net"\n'
        'name "pcnet", bus PCI\n\n'
        "Input devices:\n"
    )
    assert parse_device_help(text) == {
        "e1000",
        "e1000-82540em",
        "virtio-net-pci",
        "virtio-net",
        "pcnet",
    }


def test_real_qemu_lists_the_models_and_caches_them(tmp_path: Path) -> None:
    models = qemu_nic_models("qemu-system-x86_64", tmp_path)
    assert models >= ALWAYS
    assert models <= set(NIC_MODELS)
    cached = json.loads((tmp_path / "qemu-devices.json").read_text())
    assert sorted(models) == cached["models"]
    assert "qemu-system-x86_64" in cached["key"]


def test_cache_is_used_for_the_same_binary(tmp_path: Path) -> None:
    qemu_nic_models("qemu-system-x86_64", tmp_path)
    cache = tmp_path / "qemu-devices.json"
    data = json.loads(cache.read_text())
    cache.write_text(json.dumps({**data, "models": ["virtio"]}))
    devices.forget()
    assert qemu_nic_models("qemu-system-x86_64", tmp_path) == {"virtio"}
    cache.write_text(json.dumps({**data, "key": "another build", "models": ["virtio"]}))
    devices.forget()
    assert qemu_nic_models("qemu-system-x86_64", tmp_path) >= ALWAYS


def test_unwritable_cache_dir_still_answers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert qemu_nic_models("qemu-system-x86_64", blocker / "sub") >= ALWAYS


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(HypervisorError, match="QEMU binary '/nonexistent/qemu' is not found"):
        qemu_nic_models("/nonexistent/qemu", tmp_path)


def test_failing_binary(tmp_path: Path) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'no machine' >&2\nexit 1\n")
    fake.chmod(0o700)
    with pytest.raises(HypervisorError, match="-device help exited 1: no machine"):
        qemu_nic_models(str(fake), None)

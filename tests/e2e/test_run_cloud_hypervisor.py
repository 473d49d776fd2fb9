"""E2E: ``virt-launcher run --hypervisor cloud-hypervisor`` in a real pod netns.

No cloud-hypervisor binary can run here, so ``--cloud-hypervisor-binary`` points at the
contract-enforcing fake executable (``tests/component/cloud_hypervisor/fake_vmm.py``:
every request body checked against cloud-hypervisor-openapi.yaml, the VMM's state rules,
tap fds received with SCM_RIGHTS on vm.add-net). Everything else is real: the pod netns,
bridge, taps and nftables from ``apply``, the in-process DHCP servers, the supervisor, the
signals and the exit codes. The real-guest path is QEMU's (tests/e2e/test_run_launcher.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage
from tests.e2e.test_run_failures import assert_pod_as_the_cni_left_it, placeholder_guest
from tests.e2e.test_run_launcher import REPO, Launcher, launchers, pod, spec_yaml, start

__all__ = ["launchers", "placeholder_guest", "pod"]

pytestmark = pytest.mark.timeout(90)


def fake_binary(tmp: Path) -> Path:
    script = tmp / "cloud-hypervisor"
    script.write_text(
        f"#!/bin/sh\ncd {REPO}\n"
        f'exec {sys.executable} -m tests.component.cloud_hypervisor.fake_vmm "$@"\n'
    )
    script.chmod(0o755)
    return script


def start_ch(
    tmp: Path, guest: GuestImage, mode: str = "normal", grace_s: int = 10
) -> tuple[Launcher, Path]:
    record = tmp / "fake-record.json"
    os.environ["FAKE_CH_MODE"] = mode
    os.environ["FAKE_CH_RECORD"] = str(record)
    try:
        launcher = start(
            tmp,
            guest,
            extra=(
                "--hypervisor",
                "cloud-hypervisor",
                "--cloud-hypervisor-binary",
                str(fake_binary(tmp)),
            ),
            spec_text=spec_yaml("bridge", grace_s=grace_s),
        )
    finally:
        del os.environ["FAKE_CH_MODE"], os.environ["FAKE_CH_RECORD"]
    return launcher, record


def wait_running(launcher: Launcher, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(r.get("event") == "vm-running" for r in launcher.records()):
        assert launcher.proc.poll() is None, launcher.stderr_path.read_text()[-3000:]
        assert time.monotonic() < deadline, launcher.stderr_path.read_text()[-3000:]
        time.sleep(0.1)


def test_sigterm_power_button_exit_0_and_the_vmm_got_the_plan(
    pod: None, placeholder_guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher, record = start_ch(tmp_path, placeholder_guest)
    launchers.append(launcher)
    wait_running(launcher)
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait(30) == 0, launcher.stderr_path.read_text()[-3000:]
    assert "guest powered off after SIGTERM" in launcher.termination_log.read_text()
    seen = json.loads(record.read_text())
    assert seen["violations"] == []
    assert seen["config"]["payload"]["kernel"] == str(tmp_path / "volumes/kernel/vmlinuz")
    # The tap the plan made in the pod, opened by the launcher, passed on vm.add-net.
    assert [(f["endpoint"], f["tap_name"]) for f in seen["fds"]] == [("vm.add-net", "vltap0")]
    calls = [(method, endpoint) for method, endpoint, _ in seen["requests"]]
    assert calls == [
        ("GET", "vmm.ping"),
        ("PUT", "vm.create"),
        ("PUT", "vm.add-net"),
        ("PUT", "vm.boot"),
        ("PUT", "vm.power-button"),
    ]
    assert_pod_as_the_cni_left_it()


def test_guest_ignoring_power_button_exit_5(
    pod: None, placeholder_guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher, _ = start_ch(tmp_path, placeholder_guest, "ignore-power", grace_s=2)
    launchers.append(launcher)
    wait_running(launcher)
    began = time.monotonic()
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait(40) == 5, launcher.stderr_path.read_text()[-3000:]
    assert 2 <= time.monotonic() - began < 20
    assert "within the 2 s grace period" in launcher.termination_log.read_text()
    assert_pod_as_the_cni_left_it()


def test_vmm_dying_on_boot_exit_4(
    pod: None, placeholder_guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher, _ = start_ch(tmp_path, placeholder_guest, "die-on-boot")
    launchers.append(launcher)
    assert launcher.wait(40) == 4, launcher.stderr_path.read_text()[-3000:]
    assert "cloud-hypervisor" in launcher.termination_log.read_text()
    assert_pod_as_the_cni_left_it()

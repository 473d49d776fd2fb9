"""E2E: ``virt-launcher run`` failing at each stage in a real pod netns — exit code, one
error line, the termination log, and the pod left as the CNI made it.

No guest boots here (the kernel files are placeholders): the runs fail before or while
the VMM starts. Pod/peer namespaces and the launcher helper come from
``tests/e2e/test_run_launcher.py``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage
from testbed.harness import sh
from tests.e2e.test_run_launcher import (  # the pod fixture is reused by name
    POD,
    POD4,
    POD6,
    Launcher,
    launchers,
    pod,
    spec_yaml,
    start,
)

__all__ = ["launchers", "pod"]

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def placeholder_guest(tmp_path: Path) -> GuestImage:
    files = tmp_path / "placeholder"
    files.mkdir()
    (files / "vmlinuz").write_bytes(b"not a kernel")
    (files / "initrd.gz").write_bytes(b"not an initrd")
    return GuestImage(
        kernel=files / "vmlinuz",
        initrd=files / "initrd.gz",
        cmdline="",
        kernel_version="none",
        busybox=files / "busybox",
        directory=files,
    )


def errors_of(launcher: Launcher) -> list[dict[str, object]]:
    return [r for r in launcher.records() if r.get("level") == "error"]


def assert_pod_as_the_cni_left_it() -> None:
    addrs = sh("ip", "-n", POD, "-br", "addr").stdout
    assert f"{POD4}/24" in addrs and f"{POD6}/64" in addrs, addrs
    assert "vlbr0" not in addrs and "vltap0" not in addrs, addrs
    tables = sh("ip", "netns", "exec", POD, "nft", "list", "tables").stdout
    assert "virt_launcher" not in tables, tables
    routes = sh("ip", "-n", POD, "route", "show", "default").stdout
    assert "default via 10.88.0.1" in routes, routes


def test_missing_vmm_binary_exits_4_and_restores_the_pod(
    pod: None, placeholder_guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(
        tmp_path, placeholder_guest, extra=("--qemu-binary", str(tmp_path / "no-such-qemu"))
    )
    launchers.append(launcher)
    assert launcher.wait(30) == 4, launcher.stderr_path.read_text()[-3000:]
    (error,) = errors_of(launcher)
    assert "no-such-qemu" in str(error["msg"])
    assert launcher.termination_log.read_text().strip() == error["msg"]
    assert_pod_as_the_cni_left_it()


def test_missing_pod_interface_exits_3_before_changing_anything(
    pod: None, placeholder_guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    sh("ip", "-n", POD, "link", "set", "eth0", "down")
    sh("ip", "-n", POD, "link", "set", "eth0", "name", "ens3")
    launcher = start(tmp_path, placeholder_guest)
    launchers.append(launcher)
    assert launcher.wait(30) == 3, launcher.stderr_path.read_text()[-3000:]
    (error,) = errors_of(launcher)
    assert "'eth0'" in str(error["msg"]) and "ens3" in str(error["msg"])
    assert launcher.termination_log.read_text().strip() == error["msg"]
    links = sh("ip", "-n", POD, "-br", "link").stdout
    assert "vlbr0" not in links and "vltap0" not in links


def _private_mounts(script: str) -> tuple[str, ...]:
    """A ``start`` prefix: ``script`` runs in a private mount namespace, then the launcher."""
    return ("unshare", "-m", "--propagation", "private", "sh", "-c", f'{script} && exec "$@"', "sh")


@pytest.mark.parametrize(
    "case",
    [
        ("mount -t tmpfs tmpfs /dev/net", "/dev/net/tun is missing"),
        ("mkdir -p {state} && mount -t tmpfs -o size=8k tmpfs {state}", "bytes free"),
    ],
    ids=["no-dev-net-tun", "state-dir-8k"],
)
def test_a_set_up_refused_by_preflight_exits_3_and_leaves_the_pod_untouched(
    pod: None,
    placeholder_guest: GuestImage,
    tmp_path: Path,
    launchers: list[Launcher],
    case: tuple[str, str],
) -> None:
    """docs/reliability.md, *Set-up*: checked before anything in the pod changes."""
    del pod
    script, expected = case
    prefix = _private_mounts(script.format(state=tmp_path / "state"))
    launcher = start(tmp_path, placeholder_guest, prefix=prefix)
    launchers.append(launcher)
    assert launcher.wait(30) == 3, launcher.stderr_path.read_text()[-3000:]
    (error,) = errors_of(launcher)
    assert expected in str(error["msg"])
    assert launcher.termination_log.read_text().strip() == error["msg"]
    assert_pod_as_the_cni_left_it()


def test_guest_ignoring_the_power_button_is_stopped_after_the_grace_period(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    """The real guest kernel with ``rdinit=/bin/sleep 600`` (no acpid): the power button
    does nothing, so within the 3 s grace period the VMM is stopped: exit 5, pod restored.
    Also checks ``--console-log``."""
    del pod
    spec = spec_yaml("bridge", grace_s=3, kernel_args="console=ttyS0 rdinit=/bin/sleep 600")
    console_log = tmp_path / "console.txt"
    launcher = start(tmp_path, guest, spec_text=spec, extra=("--console-log", str(console_log)))
    launchers.append(launcher)
    deadline = time.monotonic() + 30
    while not any(r.get("event") == "vm-running" for r in launcher.records()):
        assert time.monotonic() < deadline, launcher.stderr_path.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(3)  # let the kernel come up far enough to receive the ACPI event
    began = time.monotonic()
    launcher.proc.send_signal(signal.SIGTERM)
    code = launcher.wait(40)
    took = time.monotonic() - began
    assert code == 5, launcher.stderr_path.read_text()[-3000:]
    # The guest had the grace period less the hard-stop reserve (a quarter of it); the
    # stop ends about at the grace period: the network cleanup after it (a fresh netlink
    # child) takes up to 2-3 s on this shared 2-core machine under load.
    assert 3 * 0.75 <= took < 3 + 3.5, took
    (error,) = errors_of(launcher)
    assert "did not power off within the 3 s grace period after SIGTERM" in str(error["msg"])
    assert launcher.termination_log.read_text().strip() == error["msg"]
    assert_pod_as_the_cni_left_it()
    # --console-log: the guest console went to the file, nothing to stdout.
    assert "Linux version" in console_log.read_text()
    assert launcher.console.text() == ""

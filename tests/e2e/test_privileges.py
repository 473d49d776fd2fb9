"""E2E: privilege separation of a real ``virt-launcher run`` (docs/privileges.md).

QEMU/TCG boots the test guest in the simulated pod of ``test_run_launcher`` with the
default ``--vmm-user`` (107:107). The launcher's files live in a directory the VMM user
can reach (``vmm_dir``: mode 0755, the guest's kernel copied in; the cache is under /root).
Checked against /proc, not against what the launcher says about itself:

* once the guest has its lease, every thread of the launcher has CapEff = CapPrm = 0,
  the helper holds exactly NET_ADMIN, NET_RAW, NET_BIND_SERVICE and KILL, and QEMU runs as
  uid/gid 107 with no capability and no supplementary group; ``/status`` shows the same;
* the guest got its lease and serves HTTP at the pod IP through the tap fds QEMU was given;
* CHOWN only for a disk the VMM user is given: as host root, the VM's emptyDisk becomes
  107's; with a container's bounding set without CHOWN (what the manifest grants a
  diskless VM), the diskless VM runs to the end (SIGTERM → power-off → exit 0), and a VM
  with an emptyDisk exits 3 naming CHOWN, the disk and the Pod field before anything is
  touched (no disk file, the pod as the CNI left it);
* a VMM user that cannot reach the kernel is refused before the VMM starts (exit 4,
  naming the path);
* SIGKILL to the launcher: the helper is gone too;
* a QEMU (uid 107) held frozen: the launcher, which may not signal another user, still
  stops it within the grace period (SIGKILL through the helper), exit 5.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testbed.guest.build import GuestImage
from tests.e2e.test_run_failures import assert_pod_as_the_cni_left_it, errors_of
from tests.e2e.test_run_launcher import (  # the pod fixture is reused by name
    BOOT_TIMEOUT_S,
    GRACE_S,
    POD4,
    REPO,
    Launcher,
    launchers,
    peer_http,
    pod,
    spec_yaml,
    start,
)
from tests.e2e.test_runtime_faults import Tracer, state_of

__all__ = ["launchers", "pod"]

pytestmark = pytest.mark.timeout(240)

# NET_BIND_SERVICE, NET_ADMIN, NET_RAW, and KILL (signals to the VMM of another user)
HELPER_CAPS = (1 << 10) | (1 << 12) | (1 << 13) | (1 << 5)
STATUS_SOCKET = "status.sock"


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def helper_of(launcher: Launcher) -> int:
    """The launcher's child running Python: the helper (the netlink child has exited)."""
    for _ in range(50):
        found = [
            c
            for c in children(launcher.proc.pid)
            if Path(f"/proc/{c}/exe").resolve().name.startswith("python")
        ]
        if len(found) == 1:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no single helper among {children(launcher.proc.pid)}")


def wait_dropped(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(proc_status(pid)["CapEff"], 16) == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"launcher {pid} still has CapEff {proc_status(pid)['CapEff']}")


def status_doc(vmm_dir: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "status", "--json",
         "--status-listen", str(vmm_dir / STATUS_SOCKET)],
        capture_output=True, text=True, timeout=20, cwd=REPO, check=True,
    )  # fmt: skip
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


#: What a CRI runtime grants a container the manifest asks NET_ADMIN, NET_RAW and
#: NET_BIND_SERVICE for, plus KILL/SETUID/SETGID for the VMM user — and SYS_ADMIN, only
#: because ``ip netns exec`` (the test's stand-in for the pod) needs it. No CHOWN: the
#: manifest adds it only for a VM with a disk file to hand over, and these VMs have none.
#: No DAC_OVERRIDE, DAC_READ_SEARCH or FOWNER: the launcher must not rely on bypassing file
#: permissions.
CONTAINER_CAPS = "-all,+net_admin,+net_raw,+net_bind_service,+kill,+setuid,+setgid,+sys_admin"


def with_empty_disk(spec_text: str) -> str:
    """``spec_text`` with a writable emptyDisk ``scratch`` (made in the state dir by run)."""
    document = yaml.safe_load(spec_text)
    document["spec"]["domain"]["devices"]["disks"] = [{"name": "scratch", "disk": {}}]
    document["spec"]["volumes"] = [{"name": "scratch", "emptyDisk": {"capacity": "16Mi"}}]
    return str(yaml.safe_dump(document, sort_keys=False))


@pytest.mark.parametrize("bounding", [None, CONTAINER_CAPS], ids=["host-root", "container"])
def test_launcher_holds_nothing_helper_little_vmm_is_107(
    pod: None, guest: GuestImage, vmm_dir: Path, launchers: list[Launcher], bounding: str | None
) -> None:
    """As host root the VM has an emptyDisk (handed over to 107); in the container's
    bounding set it has none and needs no CHOWN, and runs to the end without it."""
    del pod
    prefix = ["setpriv", f"--bounding-set={bounding}"] if bounding else []
    spec = spec_yaml("bridge") if bounding else with_empty_disk(spec_yaml("bridge"))
    launcher = start(
        vmm_dir,
        guest,
        extra=["--status-listen", str(vmm_dir / STATUS_SOCKET)],
        vmm_user=None,
        prefix=prefix,
        spec_text=spec,
    )
    launchers.append(launcher)
    lease4 = launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    assert lease4.args == ("eth0", f"{POD4}/24")
    assert "VL-HTTP-OK port=80" in peer_http(f"http://{POD4}/")
    pid = launcher.proc.pid
    wait_dropped(pid, 10)
    for task in Path(f"/proc/{pid}/task").iterdir():  # every thread, not just the main one
        st = proc_status(int(task.name))
        assert (st["CapEff"], st["CapPrm"]) == ("0" * 16, "0" * 16), (task.name, st["Name"])
    assert proc_status(pid)["NoNewPrivs"] == "1"
    helper = helper_of(launcher)
    st = proc_status(helper)
    assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == HELPER_CAPS
    qemu = launcher.qemu_pid()
    st = proc_status(qemu)
    assert st["Uid"].split() == ["107"] * 4 and st["Gid"].split() == ["107"] * 4
    assert st["Groups"] == "" and int(st["CapEff"], 16) == int(st["CapPrm"], 16) == 0
    # QEMU got the tap as an fd, not by name (it could not open it by name as 107).
    cmdline = Path(f"/proc/{qemu}/cmdline").read_bytes().split(b"\0")
    assert any(b"tap,id=" in a and b",fd=" in a for a in cmdline), cmdline
    # Its QMP socket was made by the launcher, in the launcher's 0700 directory, and passed
    # in as an fd (the launcher, without CAP_DAC_OVERRIDE, can still connect to it).
    assert any(a.startswith(b"socket,id=qmp,fd=") for a in cmdline), cmdline
    qmp = vmm_dir / "state" / "qemu"
    assert (qmp.stat().st_uid, qmp.stat().st_mode & 0o777) == (0, 0o700)
    assert (qmp / "qmp.sock").stat().st_uid == 0
    scratch = vmm_dir / "state" / "empty" / "scratch.img"
    if bounding is None:  # the writable disk file is the VMM user's, opened by QEMU
        assert (scratch.stat().st_uid, scratch.stat().st_gid) == (107, 107)
        assert any(str(scratch).encode() in a for a in cmdline), cmdline
    else:
        assert not scratch.exists()
    shown = {p["role"]: p for p in status_doc(vmm_dir)["processes"]}  # type: ignore[attr-defined]
    assert shown["launcher"]["capEffective"] == shown["launcher"]["capPermitted"] == []
    assert sorted(shown["helper"]["capPermitted"]) == [
        "KILL",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_RAW",
    ]
    assert (shown["vmm"]["uid"], shown["vmm"]["capEffective"]) == (107, [])
    if bounding is not None:  # to the end without CHOWN: power-off, exit cleanup, exit 0
        mark = launcher.console.mark()
        launcher.proc.send_signal(signal.SIGTERM)
        launcher.console.wait_for("POWEROFF", GRACE_S, since=mark)
        assert launcher.wait(GRACE_S + 5) == 0, launcher.stderr_path.read_text()[-3000:]
        assert "guest powered off after SIGTERM" in launcher.termination_log.read_text()
        assert_pod_as_the_cni_left_it()


def test_a_writable_disk_without_chown_is_exit_3_before_anything_is_touched(
    pod: None, guest: GuestImage, vmm_dir: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(
        vmm_dir,
        guest,
        vmm_user=None,
        prefix=["setpriv", f"--bounding-set={CONTAINER_CAPS}"],
        spec_text=with_empty_disk(spec_yaml("bridge")),
    )
    launchers.append(launcher)
    assert launcher.wait(60) == 3, launcher.stderr_path.read_text()[-3000:]
    errors = errors_of(launcher)
    assert len(errors) == 1, errors
    message = str(errors[0]["msg"])
    assert message.startswith("missing capability CHOWN (CHOWN: give the VMM user (107:107)")
    assert "'scratch' (emptyDisk)" in message, message
    assert "securityContext.capabilities.add" in message, message
    assert "CHOWN" in launcher.termination_log.read_text()
    assert not [r for r in launcher.records() if r.get("event") == "network-applied"]
    assert not (vmm_dir / "state" / "empty").exists()  # the disk file was not made
    assert_pod_as_the_cni_left_it()


def test_killing_the_launcher_kills_the_helper(
    pod: None, guest: GuestImage, vmm_dir: Path, launchers: list[Launcher]
) -> None:
    del pod
    launcher = start(vmm_dir, guest, vmm_user=None)
    launchers.append(launcher)
    launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    helper = helper_of(launcher)
    os.kill(launcher.proc.pid, signal.SIGKILL)
    launcher.proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{helper}").exists():
        state = proc_status(helper)["State"]
        if state.startswith("Z"):  # dead, waiting for its reaper
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{helper}").exists() or proc_status(helper)["State"].startswith("Z")


def test_a_kernel_the_vmm_user_cannot_reach_is_refused(
    pod: None, guest: GuestImage, tmp_path: Path, launchers: list[Launcher]
) -> None:
    del pod
    tmp_path.chmod(0o700)  # the kernel under it: uid 107 cannot traverse
    launcher = start(tmp_path, guest, vmm_user=None)
    launchers.append(launcher)
    assert launcher.wait(60) == 4
    errors = [r for r in launcher.records() if r.get("level") == "error"]
    assert errors and "the VMM user 107:107 cannot reach" in str(errors[-1]["msg"]), errors


def test_a_frozen_vmm_of_another_user_is_still_stopped_hard(
    pod: None, guest: GuestImage, vmm_dir: Path, launchers: list[Launcher]
) -> None:
    del pod
    grace = 8
    launcher = start(vmm_dir, guest, vmm_user=None, spec_text=spec_yaml("bridge", grace_s=grace))
    launchers.append(launcher)
    launcher.console.wait_for("LEASE4", BOOT_TIMEOUT_S)
    wait_dropped(launcher.proc.pid, 10)
    qemu = launcher.qemu_pid()
    assert proc_status(qemu)["Uid"].split()[0] == "107"
    tracer = Tracer(qemu)  # ptrace-stopped: neither SIGCONT nor the power button helps
    try:
        deadline = time.monotonic() + 5
        while state_of(qemu) not in "tT" and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher.proc.send_signal(signal.SIGTERM)
        code = launcher.wait(grace + 10)
    finally:
        tracer.close()
    assert code == 5, launcher.stderr_path.read_text()[-3000:]
    errors = errors_of(launcher)
    assert len(errors) == 1 and "SIGKILL" in str(errors[0]["msg"]), "\n".join(
        str(e["msg"]) for e in errors
    )
    deadline = time.monotonic() + 5
    while Path(f"/proc/{qemu}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{qemu}").exists() or proc_status(qemu)["State"].startswith("Z")

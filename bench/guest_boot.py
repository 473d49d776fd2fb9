"""Benchmark: how long the test guests take from start to their leases, and to stop.

Run as root: ``.venv/bin/python bench/guest_boot.py [--runs 3]``. Builds (or reuses) the
guest from testbed/guest, then boots it ``--runs`` times under TCG in a ``gu-bench-*`` netns
with dnsmasq as DHCPv4/DHCPv6/RA peer (testbed/harness.py) and prints one table row
per phase: min / median / max seconds on the host clock since QEMU was spawned. The peer
row is the emulator's own floor: QEMU start → first complete line on the serial console
(SeaBIOS), which no guest can beat. Also prints the cold/warm build cost of this run.

``--debian [--runs 2]``: the real Debian cloud guest (testbed/guest/debian.py), firmware
boot, cloud-init NoCloud. Each run boots it twice, alternating which goes first: as a
containerDisk with ``virt-launcher run`` in a simulated dual-stack pod (bridge binding,
the launcher's DHCP servers), and by hand with the same QEMU settings (q35, TCG,
``-cpu max``, 512 MiB, the same overlay-on-image, the same user-data and a network-config
like the launcher's: DHCPv4 + DHCPv6 by MAC) on a tap with dnsmasq as the peer. Phases
on the host clock from the start of the launcher process, or of QEMU by hand: first
serial line (SeaBIOS), GRUB's line, the DHCPv4 ACK (the launcher's ``--> ack`` log
record; dnsmasq's ``DHCPACK`` log line, polled every 50 ms), cloud-init's "finished"
line, and SIGTERM (launcher) or the power button (by hand) → exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.qcow2 import create_overlay, virtual_size
from testbed.guest.build import ensure_guest
from testbed.guest.console import ConsoleReader
from testbed.guest.debian import ensure_debian_guest
from testbed.harness import (
    Vm,
    boot,
    boot_disk,
    cidata_iso,
    dnsmasq,
    pod_netns,
    powerdown,
    qmp,
    simulated_pod,
)

MAC = "52:54:00:67:75:11"
TIMEOUT_S = 120.0


def _row(name: str, values: list[float]) -> str:
    return f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |"


def main() -> int:
    """Boot the guest ``--runs`` times and print the phase table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--debian", action="store_true", help="the Debian cloud guest")
    args = parser.parse_args()
    if args.debian:
        return debian_main(args.runs or 2)
    args.runs = args.runs or 3
    started = time.monotonic()
    image = ensure_guest()
    build_s = time.monotonic() - started
    phases: dict[str, list[float]] = {
        "peer: QEMU start -> first serial line (SeaBIOS)": [],
        "QEMU start -> VL-BOOT (init runs)": [],
        "QEMU start -> VL-LEASE4": [],
        "QEMU start -> VL-LEASE6": [],
        "QEMU start -> VL-READY": [],
        "guest uptime at VL-LEASE4": [],
        "power button -> QEMU exited": [],
    }
    netns = f"gu-bench-{os.getpid() % 100000}"
    for _ in range(args.runs):
        with (
            tempfile.TemporaryDirectory(prefix="gu-bench-") as tmp,
            pod_netns(netns, taps=("gutap0",)) as net,
            dnsmasq(net, Path(tmp), [(MAC, "10.77.0.5", "fd77::5")]),
            boot(image, net, Path(tmp), [MAC], root_ports=0) as vm,
        ):
            c = vm.console
            boot_line = c.wait_for("BOOT", TIMEOUT_S)
            lease4 = c.wait_for("LEASE4", TIMEOUT_S)
            lease6 = c.wait_for("LEASE6", TIMEOUT_S)
            ready = c.wait_for("READY", TIMEOUT_S)
            first = c.first_line_time()
            _, exited = powerdown(vm)
            values = [
                first - vm.started,
                boot_line.host_time - vm.started,
                lease4.host_time - vm.started,
                lease6.host_time - vm.started,
                ready.host_time - vm.started,
                float(lease4.fields["t"]),
                exited,
            ]
            for key, value in zip(phases, values, strict=True):
                phases[key].append(value)
    print(f"guest {image.kernel_version}, initrd {image.initrd.stat().st_size} bytes")
    print(f"ensure_guest() in this run: {build_s:.2f} s")
    print(f"| phase ({args.runs} boots, seconds) | min | median | max |")
    print("| --- | --- | --- | --- |")
    for key, values in phases.items():
        print(_row(key, values))
    return 0


# --- the Debian cloud guest: launcher vs by hand with dnsmasq ---------------------------

REPO = Path(__file__).resolve().parents[1]
DEBIAN_TIMEOUT_S = 420.0
USER_DATA = "#cloud-config\nruncmd:\n  - echo VLD-BENCH-RUNCMD > /dev/ttyS0\n"
META_DATA = "instance-id: bench-{run}\nlocal-hostname: bench-guest\n"
# By hand, the network-config the launcher writes for a dual-stack bridge NIC (DHCPv4 and
# DHCPv6 by MAC), so that both guests wait for the same leases before cloud-init goes on
NETWORK_CONFIG = (
    "version: 2\nethernets:\n  eth0:\n    match: {{macaddress: '{mac}'}}\n"
    "    dhcp4: true\n    dhcp6: true\n"
)
DEBIAN_PHASES = (
    "start -> first serial line (SeaBIOS)",
    "start -> GRUB (VLD-GRUB)",
    "start -> DHCPv4 ACK",
    "start -> cloud-init done",
    "guest uptime at cloud-init done",
    "stop (SIGTERM / power button) -> exited",
)


def _wait_line(console: ConsoleReader, needle: str, deadline: float) -> float:
    """Host time (monotonic) of the first console line holding ``needle``."""
    while time.monotonic() < deadline and not console.closed:
        for stamp, line in console.lines():
            if needle in line:
                return stamp
        time.sleep(0.05)
    raise TimeoutError(f"no {needle!r} on the console; tail:\n{console.text()[-2000:]}")


def _uptime(console: ConsoleReader) -> float:
    line = next(t for _, t in console.lines() if "Cloud-init v. " in t and " finished at " in t)
    return float(line.rsplit("Up ", 1)[1].split()[0])


def _overlay(tmp: Path, disk: Path) -> Path:
    overlay = tmp / "overlay.qcow2"
    create_overlay(overlay, str(disk), "qcow2", virtual_size(disk, "qcow2"))
    return overlay


def _spec(run: int) -> str:
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: bench-guest, namespace: bench, uid: bench-{run}}}
spec:
  hostname: bench-guest
  terminationGracePeriodSeconds: 60
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: 512Mi}}
    devices:
      disks:
        - {{name: rootdisk, bootOrder: 1, disk: {{bus: virtio}}}}
        - {{name: cloudinitdisk, cdrom: {{bus: sata}}}}
      interfaces: [{{name: pod, bridge: {{}}}}]
  networks: [{{name: pod, pod: {{}}}}]
  volumes:
    - {{name: rootdisk, containerDisk: {{image: localhost/bench:1}}}}
    - name: cloudinitdisk
      cloudInitNoCloud: {{userData: {json.dumps(USER_DATA)}}}
"""


def _launcher_run(disk: Path, run: int) -> list[float]:
    suffix = os.getpid() % 100000
    pod, peer = f"gb-pod-{suffix}", f"gb-peer-{suffix}"
    with (
        tempfile.TemporaryDirectory(prefix="gb-launcher-") as name,
        simulated_pod(pod, peer, "gbq0", ("10.78.0.5", "10.78.0.1"), ("fd78::5", "fd78::1")),
    ):
        tmp = Path(name)
        (tmp / "volumes/rootdisk").mkdir(parents=True)
        (tmp / "volumes/rootdisk/disk.img").symlink_to(disk)
        (tmp / "vm.yaml").write_text(_spec(run))
        argv = [
            "ip", "netns", "exec", pod, sys.executable, "-m", "launcher", "run",
            "--spec", str(tmp / "vm.yaml"), "--state-dir", str(tmp / "state"),
            "--volumes-dir", str(tmp / "volumes"), "--termination-log", str(tmp / "term"),
            "--accel", "tcg", "--vmm-user", "keep",
            "--status-listen", f"127.0.0.1:{20000 + suffix % 1000}",
        ]  # fmt: skip
        err_path = tmp / "launcher.err"
        wall0, start = time.time(), time.monotonic()
        with err_path.open("wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        assert proc.stdout is not None
        console = ConsoleReader(proc.stdout)
        try:
            deadline = start + DEBIAN_TIMEOUT_S
            done = _wait_line(console, " finished at ", deadline)
            grub = _wait_line(console, "VLD-GRUB", deadline)
            first = console.first_line_time()
            ack = next(
                r for r in map(json.loads, err_path.read_text().splitlines())
                if r.get("msg") == "--> ack"
            )  # fmt: skip
            ack_s = datetime.fromisoformat(ack["ts"].replace("Z", "+00:00")).timestamp() - wall0
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(90)
            stop_s = time.monotonic() - sent
            if code != 0:
                raise RuntimeError(f"launcher exited {code}: {err_path.read_text()[-2000:]}")
            return [first - start, grub - start, ack_s, done - start, _uptime(console), stop_s]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _by_hand_run(disk: Path, run: int) -> list[float]:
    mac = "52:54:00:67:75:21"
    netns = f"gb-hand-{os.getpid() % 100000}"
    with (
        tempfile.TemporaryDirectory(prefix="gb-hand-") as name,
        pod_netns(netns, bridge="gbbr0", taps=("gbtap0",), gateway4="10.79.0.1/24",
                  gateway6="fd79::1/64") as net,
    ):  # fmt: skip
        tmp = Path(name)
        iso = tmp / "cidata.iso"
        cidata_iso(iso, {"user-data": USER_DATA.encode(),
                         "meta-data": META_DATA.format(run=run).encode(),
                         "network-config": NETWORK_CONFIG.format(mac=mac).encode()})  # fmt: skip
        extra = [
            "-blockdev", json.dumps({"driver": "raw", "node-name": "cd", "read-only": True,
                                     "file": {"driver": "file", "filename": str(iso)}}),
            "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-cd,drive=cd,bus=scsi0.0",
        ]  # fmt: skip
        with (
            dnsmasq(net, tmp, [(mac, "10.79.0.5", "fd79::5")], hostname="bench-guest") as log,
            boot_disk(_overlay(tmp, disk), net, tmp, [mac], extra=extra) as vm,
        ):
            deadline = vm.started + DEBIAN_TIMEOUT_S
            ack = 0.0
            while time.monotonic() < deadline and not vm.console.closed:
                if not ack and "DHCPACK" in log.read_text(errors="replace"):
                    ack = time.monotonic()
                if any(" finished at " in t for _, t in vm.console.lines()):
                    break
                time.sleep(0.05)
            done = _wait_line(vm.console, " finished at ", deadline)
            if not ack:
                raise TimeoutError(f"no DHCPACK in dnsmasq's log {log}")
            grub = _wait_line(vm.console, "VLD-GRUB", deadline)
            first = vm.console.first_line_time()
            _, stop_s = powerdown_any(vm)
            return [first - vm.started, grub - vm.started, ack - vm.started, done - vm.started,
                    _uptime(vm.console), stop_s]  # fmt: skip


def powerdown_any(vm: Vm) -> tuple[int, float]:
    """Press the power button and wait (bounded) for QEMU to exit: (code, seconds)."""
    pressed = time.monotonic()
    qmp(vm, ("system_powerdown", {}))
    code = vm.proc.wait(90)
    return code, time.monotonic() - pressed


def debian_main(runs: int) -> int:
    """Boot the Debian guest ``runs`` times each way and print the comparison table."""
    started = time.monotonic()
    image = ensure_debian_guest()
    build_s = time.monotonic() - started
    launcher: dict[str, list[float]] = {p: [] for p in DEBIAN_PHASES}
    by_hand: dict[str, list[float]] = {p: [] for p in DEBIAN_PHASES}
    for run in range(runs):
        order = [(launcher, _launcher_run), (by_hand, _by_hand_run)]
        for table, fn in order if run % 2 == 0 else reversed(order):
            for key, value in zip(DEBIAN_PHASES, fn(image.disk, run), strict=True):
                table[key].append(value)
    size = image.disk.stat().st_size / (1 << 20)
    print(f"Debian guest {image.kernel_version}, disk {size:.0f} MiB qcow2, "
          f"cloud-init {image.packages.get('cloud-init')}")  # fmt: skip
    print(f"ensure_debian_guest() in this run: {build_s:.2f} s; load average {os.getloadavg()}")
    print(f"| phase ({runs} boots each, seconds) | launcher min | median | max "
          "| by hand + dnsmasq min | median | max |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key in DEBIAN_PHASES:
        a, b = launcher[key], by_hand[key]
        print(f"| {key} | {min(a):.1f} | {statistics.median(a):.1f} | {max(a):.1f} "
              f"| {min(b):.1f} | {statistics.median(b):.1f} | {max(b):.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

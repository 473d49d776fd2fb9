"""Benchmark: how long the tiny test guest takes from QEMU start to its leases, and to stop.

Run as root: ``.venv/bin/python bench/guest_boot.py [--runs 3]``. Builds (or reuses) the
guest from testbed/guest, then boots it ``--runs`` times under TCG in a ``gu-bench-*`` netns
with dnsmasq as DHCPv4/DHCPv6/RA peer (testbed/harness.py) and prints one table row
per phase: min / median / max seconds on the host clock since QEMU was spawned. The peer
row is the emulator's own floor: QEMU start → first complete line on the serial console
(SeaBIOS), which no guest can beat. Also prints the cold/warm build cost of this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.guest.build import ensure_guest
from testbed.harness import boot, dnsmasq, pod_netns, powerdown

MAC = "52:54:00:67:75:11"
TIMEOUT_S = 120.0


def _row(name: str, values: list[float]) -> str:
    return f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |"


def main() -> int:
    """Boot the guest ``--runs`` times and print the phase table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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


if __name__ == "__main__":
    raise SystemExit(main())

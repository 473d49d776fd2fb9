"""Benchmark: what a launcher costs while its VM runs and nothing happens, beside dnsmasq.

Run as root: ``.venv/bin/python bench/idle.py [--window 30] [--runs 1]``. Per run:

* a simulated pod (netns ``id-pod`` ↔ ``id-peer``, eth0 10.244.7.5/24 +
  fd00:10:244:7::5/64) and ``ip netns exec id-pod virt-launcher run`` booting the tiny
  test guest (bridge binding, DHCPv4 + DHCPv6 + RA served in process, QEMU TCG);
* waits for the guest's v4 and v6 leases, makes ONE ``GET /status`` (the endpoint's
  HTTP stack loads then), waits ``--settle`` seconds, then measures the launcher process
  alone over ``--window`` seconds: CPU time (ms per second), wakeups (context switches
  per second, all threads), and RSS/PSS/USS from ``/proc/PID/smaps_rollup`` at the end
  (bench/procstat.py); the RSS before the status request is printed too;
* the peer in the same run: the same guest booted by hand on a tap with dnsmasq serving
  the same kind of static v4+v6 lease with RAs (testbed/harness.py), measured the same
  way over the same window once the guest holds both leases.

Prints one markdown table with the launcher/dnsmasq ratio of each row.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procstat import MIB, Cost, cost, memory, sample  # noqa: E402
from testbed.guest.build import GuestImage, ensure_guest  # noqa: E402
from testbed.guest.console import ConsoleReader  # noqa: E402
from testbed.harness import boot, dnsmasq, pod_netns, simulated_pod  # noqa: E402

POD, PEER, DNSM = "id-pod", "id-peer", "id-dnsm"
POD4, PEER4 = "10.244.7.5", "10.244.7.1"
POD6, PEER6 = "fd00:10:244:7::5", "fd00:10:244:7::1"
MAC = "02:00:00:00:07:01"
LEASE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0
LAUNCHER = REPO / ".venv/bin/virt-launcher"
PYTHON = REPO / ".venv/bin/python"
STATUS_PORT = 8187  # not the default 8186: other engineers' launchers may hold it

_FETCH = f"""
import json, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:{STATUS_PORT}/status", timeout=20).read()
assert "phase" in json.loads(body)
"""


def spec_text(
    guest: GuestImage, name: str, mac: str, memory_mib: int = 256, *, kernel_extra: str = ""
) -> str:
    """A KubeVirt VMI booting the test guest with one bridge NIC (bench/density.py too)."""
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}, namespace: bench}}
spec:
  hostname: {name}
  terminationGracePeriodSeconds: 20
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: {memory_mib}Mi}}
    firmware:
      kernelBoot:
        container: {{image: bench/guest, kernelPath: /vmlinuz, initrdPath: /initrd.gz}}
        kernelArgs: "{guest.cmdline} vl.ready_timeout=60 {kernel_extra}"
    devices:
      interfaces: [{{name: pod, bridge: {{}}, macAddress: "{mac}"}}]
  networks: [{{name: pod, pod: {{}}}}]
"""


def launcher_argv(netns: str, work: Path, status_port: int) -> list[str]:
    """``ip netns exec NETNS virt-launcher run`` on ``work``'s spec, volumes and state."""
    return [
        "ip", "netns", "exec", netns, str(LAUNCHER), "run", "--spec", str(work / "vm.yaml"),
        "--volumes-dir", str(work / "volumes"), "--state-dir", str(work / "state"),
        "--accel", "tcg", "--vmm-user", "keep", "--termination-log", str(work / "termination-log"),
        "--status-listen", f"127.0.0.1:{status_port}",
    ]  # fmt: skip


def prepare(
    guest: GuestImage,
    work: Path,
    name: str,
    mac: str,
    memory_mib: int = 256,
    *,
    kernel_extra: str = "",
) -> None:
    """The spec and the volumes dir (kernel + initrd links) of one launcher in ``work``."""
    volumes = work / "volumes" / "kernel"
    volumes.mkdir(parents=True)
    (volumes / "vmlinuz").symlink_to(guest.kernel)
    (volumes / "initrd.gz").symlink_to(guest.initrd)
    text = spec_text(guest, name, mac, memory_mib, kernel_extra=kernel_extra)
    (work / "vm.yaml").write_text(text)


def status_once(netns: str, port: int) -> None:
    """One ``GET /status`` from inside ``netns``."""
    fetch = _FETCH.replace(str(STATUS_PORT), str(port))
    subprocess.run(
        ["ip", "netns", "exec", netns, str(PYTHON), "-c", fetch],
        check=True,
        timeout=30,
        capture_output=True,
    )


def measure(pid: int, window: float) -> Cost:
    before = sample(pid)
    time.sleep(window)
    return cost(pid, before)


def run_launcher(guest: GuestImage, work: Path, window: float, settle: float) -> tuple[Cost, int]:
    """The launcher's idle cost, and its RSS before the status request."""
    prepare(guest, work, "id-vm", MAC)
    with (work / "launcher.err").open("wb") as err:
        proc = subprocess.Popen(
            launcher_argv(POD, work, STATUS_PORT), stdout=subprocess.PIPE, stderr=err
        )
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(work / "console.log"))
    try:
        console.wait_for("LEASE4", LEASE_TIMEOUT_S)
        console.wait_for("LEASE6", LEASE_TIMEOUT_S)
        rss_before = memory(proc.pid)[0]
        status_once(POD, STATUS_PORT)
        time.sleep(settle)
        used = measure(proc.pid, window)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"launcher exited {code}; see {work / 'launcher.err'}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        console.wait_closed(5)
    return used, rss_before


def run_dnsmasq(guest: GuestImage, work: Path, window: float, settle: float) -> Cost:
    machine = ["-cpu", "max", "-device", "pvpanic"]
    with (
        pod_netns(DNSM, bridge="idbr0", taps=("idtap0",), gateway4="10.244.6.1/24",
                  gateway6="fd00:10:244:6::1/64") as net,
        dnsmasq(net, work, [(MAC, "10.244.6.5", "fd00:10:244:6::5")], hostname="id-vm"),
        boot(guest, net, work, [MAC], extra=machine, root_ports=5) as vm,
    ):  # fmt: skip
        vm.console.wait_for("LEASE4", LEASE_TIMEOUT_S)
        vm.console.wait_for("LEASE6", LEASE_TIMEOUT_S)
        time.sleep(settle)
        return measure(int((work / "dnsmasq.pid").read_text()), window)


def _med(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return f"{fmt.format(statistics.median(values))} ({low}-{high})"


def main() -> int:
    """Measure the launcher and dnsmasq ``--runs`` times each; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the leases")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/idle.py: run as root (network namespaces)", file=sys.stderr)
        return 2
    guest = ensure_guest()
    ours: list[Cost] = []
    before: list[int] = []
    peers: list[Cost] = []
    for i in range(args.runs):
        with (
            tempfile.TemporaryDirectory(prefix="id-") as tmp,
            simulated_pod(POD, PEER, "eth0", (POD4, PEER4), (POD6, PEER6)),
        ):
            used, rss = run_launcher(guest, Path(tmp), args.window, args.settle)
            ours.append(used)
            before.append(rss)
            print(f"launcher {i + 1}: {used}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="id-") as tmp:
            peers.append(run_dnsmasq(guest, Path(tmp), args.window, args.settle))
            print(f"dnsmasq {i + 1}: {peers[-1]}", file=sys.stderr)
    print(
        f"{args.runs} run(s), {args.window:.0f} s window, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the end; median (min-max)"
    )
    print("| while idle (VM running, status used once) | virt-launcher | dnsmasq | ratio |")
    print("| --- | --- | --- | --- |")
    rows = [
        ("CPU, ms per second", lambda c: c.cpu_ms_per_s, "{:.3f}"),
        ("wakeups (context switches) per second", lambda c: c.wakeups_per_s, "{:.2f}"),
        ("RSS, MiB", lambda c: c.rss / MIB, "{:.1f}"),
        ("PSS, MiB", lambda c: c.pss / MIB, "{:.1f}"),
        ("USS, MiB", lambda c: c.uss / MIB, "{:.1f}"),
    ]
    for label, get, fmt in rows:
        a = [get(c) for c in ours]
        b = [get(c) for c in peers]
        ratio = statistics.median(a) / statistics.median(b) if statistics.median(b) else 0.0
        print(f"| {label} | {_med(a, fmt)} | {_med(b, fmt)} | {ratio:.1f}× |")
    print(
        f"| RSS before the status request, MiB | {_med([r / MIB for r in before], '{:.1f}')} | | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `virt-launcher run` start → VMM spawned, launcher RSS, guest boot → DHCP lease.

Run as root: ``.venv/bin/python bench/launcher.py [--runs 5] [--accel tcg]``. Builds (or
reuses) the tiny test guest (testbed/guest/build.py), then ``--runs`` times:

* makes a simulated pod: netns ``bm-pod`` (eth0 10.244.9.5/24 + fd00:10:244:9::5/64,
  default routes via the peer) wired by a veth to ``bm-peer``, a fresh state dir;
* starts ``ip netns exec bm-pod .venv/bin/virt-launcher run`` (bridge binding, the guest
  by direct kernel boot) and reads the launcher's JSON log: *spawn* is the ``qemu
  started`` record's timestamp minus the wall clock just before the launcher was exec'd
  (the launcher applies the network before it spawns QEMU, so the network is ready then);
  ``spec-loaded`` and ``network-applied`` give the split;
* waits for the guest's ``VL-LEASE4`` / ``VL-LEASE6`` lines; *lease* is host seconds
  from the QEMU spawn to the line, and the guest's own ``t=`` (seconds since its kernel
  started) is printed too;
* samples RSS (psutil) of the launcher process alone and of its children (QEMU), then
  SIGTERM and waits for exit 0.

Peers in the same run: for spawn, the bare interpreter (``ip netns exec bm-pod
.venv/bin/python -c pass``); for the lease, the same guest booted by hand
(testbed/harness.py: QEMU on a tap in netns ``bm-dnsm``, with the launcher's CPU
model, pvpanic and root ports) with dnsmasq serving the same kind of static v4+v6 lease
with RA; for RSS, that dnsmasq. Also: start → DHCPv4 listening, the status endpoint's
first request and the RSS after it. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.guest.build import GuestImage, ensure_guest  # noqa: E402
from testbed.guest.console import ConsoleReader  # noqa: E402
from testbed.harness import boot, dnsmasq, pod_netns, simulated_pod  # noqa: E402

POD, PEER, DNSM = "bm-pod", "bm-peer", "bm-dnsm"
POD4, PEER4 = "10.244.9.5", "10.244.9.1"
POD6, PEER6 = "fd00:10:244:9::5", "fd00:10:244:9::1"
MAC = "02:00:00:00:09:01"
LEASE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0
LAUNCHER = REPO / ".venv/bin/virt-launcher"
PYTHON = REPO / ".venv/bin/python"
MIB = 1 << 20


def spec_text(guest: GuestImage) -> str:
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: bm-vm, namespace: bench}}
spec:
  hostname: bm-guest
  terminationGracePeriodSeconds: 20
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: 256Mi}}
    firmware:
      kernelBoot:
        container: {{image: bench/guest, kernelPath: /vmlinuz, initrdPath: /initrd.gz}}
        kernelArgs: "{guest.cmdline} vl.ready_timeout=60"
    devices:
      interfaces: [{{name: pod, bridge: {{}}, macAddress: "{MAC}"}}]
  networks: [{{name: pod, pod: {{}}}}]
"""


@dataclass
class LauncherRun:
    spawn_s: float  # launcher exec → qemu started (log)
    spec_s: float | None  # launcher exec → spec loaded (log; None: not logged at info)
    network_s: float  # launcher exec → network applied (log)
    lease4_s: float  # qemu spawned → VL-LEASE4 on the launcher's stdout
    lease6_s: float
    guest_t4: float  # the guest's own clock at the v4 lease
    guest_t6: float
    guest_boot: float  # the guest's clock when its init started (VL-BOOT t=)
    rss_launcher: int
    rss_children: int
    rss_helpers: int  # the launcher's children other than QEMU (the netlink child has exited)
    dhcp_s: float  # launcher exec → DHCPv4 server listening (log)
    status_first_s: float  # the first GET /status (loads the endpoint's HTTP stack)
    rss_after_status: int  # launcher RSS after that request
    exit_code: int


def _log_time(stderr: Path, msg: str) -> float:
    """Wall-clock time of the first log record whose ``msg`` or ``event`` is ``msg``."""
    for line in stderr.read_text().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if msg in (rec.get("msg"), rec.get("event")):
            ts = datetime.datetime.strptime(str(rec["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ")
            return ts.replace(tzinfo=datetime.UTC).timestamp()
    raise RuntimeError(f"no {msg!r} record in {stderr}")


def _maybe_log_time(stderr: Path, msg: str, t0: float) -> float | None:
    try:
        return _log_time(stderr, msg) - t0
    except RuntimeError:
        return None


def run_launcher(guest: GuestImage, work: Path, accel: str) -> LauncherRun:
    volumes = work / "volumes" / "kernel"
    volumes.mkdir(parents=True)
    (volumes / "vmlinuz").symlink_to(guest.kernel)
    (volumes / "initrd.gz").symlink_to(guest.initrd)
    spec = work / "vm.yaml"
    spec.write_text(spec_text(guest))
    stderr = work / "launcher.err"
    argv = [
        "ip", "netns", "exec", POD, str(LAUNCHER), "run", "--spec", str(spec),
        "--volumes-dir", str(work / "volumes"), "--state-dir", str(work / "state"),
        "--accel", accel, "--vmm-user", "keep", "--termination-log", str(work / "termination-log"),
    ]  # fmt: skip
    with stderr.open("wb") as err:
        t0 = time.time()
        m0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(work / "console.log"))
    try:
        lease4 = console.wait_for("LEASE4", LEASE_TIMEOUT_S)
        lease6 = console.wait_for("LEASE6", LEASE_TIMEOUT_S)
        launcher = psutil.Process(proc.pid)
        rss_launcher = launcher.memory_info().rss
        children = launcher.children(recursive=True)
        rss_children = sum(c.memory_info().rss for c in children)
        rss_helpers = sum(c.memory_info().rss for c in children if "qemu" not in c.name())
        status_first = _status_request()
        rss_after_status = launcher.memory_info().rss
        spawn_wall = _log_time(stderr, "qemu started")
        spawn_mono = m0 + (spawn_wall - t0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        console.wait_closed(5)
    return LauncherRun(
        spawn_s=spawn_wall - t0,
        spec_s=_maybe_log_time(stderr, "spec-loaded", t0),
        network_s=_log_time(stderr, "network-applied") - t0,
        lease4_s=lease4.host_time - spawn_mono,
        lease6_s=lease6.host_time - spawn_mono,
        guest_t4=float(lease4.fields["t"]),
        guest_t6=float(lease6.fields["t"]),
        guest_boot=float(console.vl_lines("BOOT")[0].fields["t"]),
        rss_launcher=rss_launcher,
        rss_children=rss_children,
        rss_helpers=rss_helpers,
        dhcp_s=_log_time(stderr, "DHCPv4 server listening") - t0,
        status_first_s=status_first,
        rss_after_status=rss_after_status,
        exit_code=code,
    )


_FETCH = """
import json, sys, time, urllib.request
started = time.monotonic()
body = urllib.request.urlopen("http://127.0.0.1:8186/status", timeout=20).read()
elapsed = time.monotonic() - started
assert "phase" in json.loads(body)
print(elapsed)
"""


def _status_request() -> float:
    """Seconds for the status endpoint's first ``GET /status`` (it loads its HTTP stack)."""
    done = subprocess.run(
        ["ip", "netns", "exec", POD, str(PYTHON), "-c", _FETCH],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"GET /status failed: {done.stderr[-500:]}")
    return float(done.stdout.strip())


def interpreter_start() -> float:
    started = time.monotonic()
    subprocess.run(["ip", "netns", "exec", POD, str(PYTHON), "-c", "pass"], check=True, timeout=20)
    return time.monotonic() - started


@dataclass
class DnsmasqRun:
    lease4_s: float
    lease6_s: float
    guest_t4: float
    guest_t6: float
    guest_boot: float
    rss_dnsmasq: int


def run_dnsmasq(guest: GuestImage, work: Path, accel: str) -> DnsmasqRun:
    # the guest machine as the launcher builds it (hypervisor/qemu/argv.py): the CPU model
    # (TCG emulates -cpu max more slowly than QEMU's default), pvpanic, 5 root ports, so
    # the two columns differ in who serves DHCP, not in how fast the guest boots
    machine = ["-cpu", "host" if accel == "kvm" else "max", "-device", "pvpanic"]
    with (
        pod_netns(DNSM, bridge="bmbr0", taps=("bmtap0",), gateway4="10.244.8.1/24",
                  gateway6="fd00:10:244:8::1/64") as net,
        dnsmasq(net, work, [(MAC, "10.244.8.5", "fd00:10:244:8::5")], hostname="bm-guest"),
        boot(guest, net, work, [MAC], accel=accel, extra=machine, root_ports=5) as vm,
    ):  # fmt: skip
        lease4 = vm.console.wait_for("LEASE4", LEASE_TIMEOUT_S)
        lease6 = vm.console.wait_for("LEASE6", LEASE_TIMEOUT_S)
        rss = psutil.Process(int((work / "dnsmasq.pid").read_text())).memory_info().rss
        return DnsmasqRun(
            lease4_s=lease4.host_time - vm.started,
            lease6_s=lease6.host_time - vm.started,
            guest_t4=float(lease4.fields["t"]),
            guest_t6=float(lease6.fields["t"]),
            guest_boot=float(vm.console.vl_lines("BOOT")[0].fields["t"]),
            rss_dnsmasq=rss,
        )


def _stats(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    fmt = "{:.2f}" if unit == "s" else "{:.0f}" if unit == "ms" else "{:.1f}"
    return f"{fmt.format(statistics.median(v))} {unit} ({fmt.format(min(v))}-{fmt.format(max(v))})"


def main() -> int:
    """Run the launcher and the dnsmasq peer ``--runs`` times each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--accel",
        default="tcg",
        choices=("auto", "kvm", "tcg"),
        help="passed to the launcher (auto probes KVM once per fresh state dir); "
        "the dnsmasq peer uses tcg unless kvm is given",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/launcher.py: run as root (network namespaces)", file=sys.stderr)
        return 2
    guest = ensure_guest()
    runs: list[LauncherRun] = []
    peers: list[DnsmasqRun] = []
    bare: list[float] = []
    for i in range(args.runs):
        with (
            tempfile.TemporaryDirectory(prefix="bm-") as tmp,
            simulated_pod(POD, PEER, "eth0", (POD4, PEER4), (POD6, PEER6)),
        ):
            bare.append(interpreter_start())
            runs.append(run_launcher(guest, Path(tmp), args.accel))
            print(f"run {i + 1}: {runs[-1]}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="bm-") as tmp:
            peers.append(run_dnsmasq(guest, Path(tmp), "kvm" if args.accel == "kvm" else "tcg"))
            print(f"peer {i + 1}: {peers[-1]}", file=sys.stderr)
    load = os.getloadavg()[0]
    print(
        f"{args.runs} runs, --accel {args.accel}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; median (min-max)"
    )
    print("| measurement | virt-launcher | peer | peer is |")
    print("| --- | --- | --- | --- |")
    print(
        f"| start → QEMU spawned (network ready) | {_stats([r.spawn_s for r in runs], 'ms', 1e3)} "
        f"| {_stats(bare, 'ms', 1e3)} | `ip netns exec … python -c pass` |"
    )
    spec = [r.spec_s for r in runs if r.spec_s is not None]
    if spec:  # the launcher logs no spec-loaded record at info level since the restructure
        print(f"| start → spec loaded | {_stats(spec, 'ms', 1e3)} | | |")
    print(f"| start → network applied | {_stats([r.network_s for r in runs], 'ms', 1e3)} | | |")
    print(
        f"| start → DHCPv4 server listening | {_stats([r.dhcp_s for r in runs], 'ms', 1e3)} | | |"
    )
    print(
        f"| QEMU spawned → guest DHCPv4 lease (host clock) | "
        f"{_stats([r.lease4_s for r in runs])} | {_stats([p.lease4_s for p in peers])} "
        "| same guest, QEMU by hand + dnsmasq |"
    )
    print(
        f"| guest clock at DHCPv4 lease (`t=`) | {_stats([r.guest_t4 for r in runs])} "
        f"| {_stats([p.guest_t4 for p in peers])} | same |"
    )
    print(
        f"| guest clock when init started (`VL-BOOT t=`) | "
        f"{_stats([r.guest_boot for r in runs])} | {_stats([p.guest_boot for p in peers])} "
        "| same |"
    )
    print(
        f"| guest init → DHCPv4 lease (guest clock) | "
        f"{_stats([r.guest_t4 - r.guest_boot for r in runs])} | "
        f"{_stats([p.guest_t4 - p.guest_boot for p in peers])} | same |"
    )
    print(
        f"| QEMU spawned → guest DHCPv6 lease (host clock) | "
        f"{_stats([r.lease6_s for r in runs])} | {_stats([p.lease6_s for p in peers])} | same |"
    )
    print(
        f"| guest clock at DHCPv6 lease (`t=`) | {_stats([r.guest_t6 for r in runs])} "
        f"| {_stats([p.guest_t6 for p in peers])} | same |"
    )
    print(
        f"| RSS while the VM runs, launcher only | "
        f"{_stats([r.rss_launcher / MIB for r in runs], 'MiB')} | "
        f"{_stats([p.rss_dnsmasq / MIB for p in peers], 'MiB')} | dnsmasq serving the lease |"
    )
    print(
        f"| RSS of the launcher's other children (netlink child …) | "
        f"{_stats([r.rss_helpers / MIB for r in runs], 'MiB')} | | |"
    )
    print(
        f"| first `GET /status` (loads the endpoint's HTTP stack) | "
        f"{_stats([r.status_first_s for r in runs], 'ms', 1e3)} | | |"
    )
    print(
        f"| RSS after that request, launcher only | "
        f"{_stats([r.rss_after_status / MIB for r in runs], 'MiB')} | | |"
    )
    print(
        f"| RSS of the launcher's children (QEMU) | "
        f"{_stats([r.rss_children / MIB for r in runs], 'MiB')} | | |"
    )
    codes = sorted({r.exit_code for r in runs})
    print(f"| exit code after SIGTERM | {', '.join(map(str, codes))} | | |")
    return 0 if codes == [0] else 1


if __name__ == "__main__":
    sys.exit(main())

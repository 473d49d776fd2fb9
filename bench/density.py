"""Benchmark: N simulated VM pods started at once, each with its own launcher, beside the peer.

Run as root: ``.venv/bin/python bench/density.py [--counts 1,5] [--window 30]
[--memory 128]`` (the README's table: ``--counts 1,5,10,20``). For each N:

* **virt-launcher**: N simulated pods (netns ``dn-podI`` ↔ ``dn-peerI``, eth0
  10.246.I.5/24 + fd00:10:246:I::5/64), N ``virt-launcher run`` started in one burst,
  each booting the tiny test guest under TCG (bridge binding, DHCPv4 + DHCPv6 + RA in the
  launcher). *start → spawn* is the ``qemu started`` log record minus the launcher's own
  start time (the network is applied before the spawn); *start → lease* is the guest's
  ``VL-LEASE4`` line on the launcher's stdout. Once every guest has its lease, each
  launcher's status endpoint is asked once, and after ``--settle`` s the launchers'
  total CPU is measured over ``--window`` s, with each one's RSS and PSS
  (``/proc/PID/smaps_rollup``) at the end.
* **peer** (the layout Virtink and KubeVirt's old bridge binding use, by commands): the
  same pods, each set up by ``ip`` commands (bridge, tap, the pod interface enslaved,
  its address flushed), one ``nft`` table keeping DHCP inside the pod, and one dnsmasq
  per pod serving the same static v4 + v6 lease with RAs, then the same guest under QEMU
  with the launcher's machine options. *start → spawn* is the set-up's start to the QEMU
  spawn; CPU and memory are the N dnsmasq processes'.

Prints one markdown table, one row per N and side. All namespaces and processes are
removed at the end of each N.
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
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.idle import launcher_argv, prepare, status_once  # noqa: E402
from bench.procstat import MIB, memory, sample  # noqa: E402
from testbed.guest.build import GuestImage, ensure_guest  # noqa: E402
from testbed.guest.console import ConsoleReader, ConsoleTimeout  # noqa: E402
from testbed.harness import PodNet, boot, sh, simulated_pod  # noqa: E402

STOP_TIMEOUT_S = 90.0
# Many TCG guests on two busy cores: the kernel's IO-APIC timer check can fail ("IO-APIC
# + timer doesn't work!" panic); both sides' guests skip it.
KERNEL_EXTRA = "no_timer_check"
BASE_PORT = 8300  # status ports 8300+I on each pod's own loopback


@dataclass
class Side:
    """One side's numbers for one N."""

    spawn_s: list[float]
    lease_s: list[float]
    cpu_ms_per_s: float  # all N processes together
    rss: list[int]
    pss: list[int]


def _addr(i: int) -> tuple[tuple[str, str], tuple[str, str], str]:
    return (
        (f"10.246.{i}.5", f"10.246.{i}.1"),
        (f"fd00:10:246:{i}::5", f"fd00:10:246:{i}::1"),
        f"02:00:00:00:0b:{i:02x}",
    )


def _log_time(stderr: Path, event: str) -> float:
    for line in stderr.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if event in (rec.get("msg"), rec.get("event")):
                ts = datetime.datetime.strptime(str(rec["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ")
                return ts.replace(tzinfo=datetime.UTC).timestamp()
    raise RuntimeError(f"no {event!r} record in {stderr}")


def _idle(pids: list[int], settle: float, window: float) -> tuple[float, list[int], list[int]]:
    time.sleep(settle)
    before = [sample(p) for p in pids]
    time.sleep(window)
    after = [sample(p) for p in pids]
    cpu = sum(a.cpu_ns - b.cpu_ns for a, b in zip(after, before, strict=True)) / 1e6 / window
    mem = [memory(p) for p in pids]
    return cpu, [m[0] for m in mem], [m[1] for m in mem]


def _lease_timeout(n: int) -> float:
    return 90.0 + 15.0 * n  # N TCG guests share two cores


def launchers(guest: GuestImage, n: int, work: Path, args: argparse.Namespace) -> Side:
    with ExitStack() as stack:
        for i in range(n):
            v4, v6, _ = _addr(i)
            stack.enter_context(simulated_pod(f"dn-pod{i}", f"dn-peer{i}", "eth0", v4, v6))
        dirs = []
        for i in range(n):
            d = work / f"l{i}"
            prepare(guest, d, f"dn-vm{i}", _addr(i)[2], args.memory, kernel_extra=KERNEL_EXTRA)
            dirs.append(d)
        procs: list[subprocess.Popen[bytes]] = []
        consoles: list[ConsoleReader] = []
        started: list[tuple[float, float]] = []
        try:
            for i, d in enumerate(dirs):
                with (d / "launcher.err").open("wb") as err:
                    started.append((time.time(), time.monotonic()))
                    procs.append(
                        subprocess.Popen(
                            launcher_argv(f"dn-pod{i}", d, BASE_PORT + i),
                            stdout=subprocess.PIPE,
                            stderr=err,
                        )
                    )
            for p, d in zip(procs, dirs, strict=True):
                assert p.stdout is not None
                consoles.append(ConsoleReader(p.stdout, log_path=str(d / "console.log")))
            leases = [
                c.wait_for("LEASE4", _lease_timeout(n)).host_time - m0
                for c, (_, m0) in zip(consoles, started, strict=True)
            ]
            spawns = [
                _log_time(d / "launcher.err", "qemu started") - t0
                for d, (t0, _) in zip(dirs, started, strict=True)
            ]
            if args.status:
                for i in range(n):
                    status_once(f"dn-pod{i}", BASE_PORT + i)
            cpu, rss, pss = _idle([p.pid for p in procs], args.settle, args.window)
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(STOP_TIMEOUT_S) for p in procs]
            if any(codes):
                print(f"launcher exit codes: {codes}", file=sys.stderr)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            for c in consoles:
                c.wait_closed(5)
    return Side(spawns, leases, cpu, rss, pss)


def _peer_setup(i: int, work: Path) -> tuple[PodNet, subprocess.Popen[bytes]]:
    """The pod wired by commands, as a shell-script launcher would: bridge, tap, eth0 in."""
    ns = f"dp-pod{i}"
    (v4, _gw4), (v6, _gw6), mac = _addr(i)
    ip = ("ip", "-n", ns)
    sh(*ip, "link", "add", "br0", "type", "bridge", "stp_state", "0")
    sh(*ip, "tuntap", "add", "dev", "tap0", "mode", "tap")
    sh(*ip, "addr", "flush", "dev", "eth0")  # the pod IP goes to the guest
    sh(*ip, "link", "set", "eth0", "master", "br0")
    sh(*ip, "link", "set", "tap0", "master", "br0", "up")
    # dnsmasq needs an address of the subnet on the interface it serves
    sh(*ip, "addr", "add", f"10.246.{i}.2/24", "dev", "br0")
    sh(*ip, "addr", "add", f"fd00:10:246:{i}::2/64", "dev", "br0", "nodad")
    # no DAD for br0's link-local either: dnsmasq (--bind-interfaces) binds to it at once
    # and exits 3 (address not available) if it is still tentative, seen under load
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.br0.accept_dad=0")
    sh(*ip, "link", "set", "br0", "up")
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=(
            b"table bridge dp {\n chain keep_dhcp {\n"
            b"  type filter hook forward priority 0;\n"
            b'  oifname "eth0" udp dport { 67, 68, 546, 547 } drop;\n }\n}\n'
        ),
        check=True,
        timeout=10,
    )
    log = work / "dnsmasq.log"
    dnsmasq = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
            f"--dhcp-range=10.246.{i}.0,static,255.255.255.0,1h",
            f"--dhcp-range=fd00:10:246:{i}::,static,64,1h",
            "--enable-ra",
            f"--dhcp-option=option:router,10.246.{i}.1",
            f"--dhcp-host={mac},{v4},[{v6}],dn-vm{i}",
            f"--log-facility={log}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "dnsmasq.err").open("wb"),
    )
    net = PodNet(ns, "br0", ("tap0",), f"10.246.{i}.2/24", f"fd00:10:246:{i}::2/64")
    return net, dnsmasq


def peers(guest: GuestImage, n: int, work: Path, args: argparse.Namespace) -> Side:
    with ExitStack() as stack:
        for i in range(n):
            v4, v6, _ = _addr(i)
            stack.enter_context(simulated_pod(f"dp-pod{i}", f"dp-peer{i}", "eth0", v4, v6))
        dirs = [work / f"p{i}" for i in range(n)]
        for d in dirs:
            d.mkdir()
        made: dict[int, tuple[PodNet, subprocess.Popen[bytes], float]] = {}
        errors: list[Exception] = []

        def setup(i: int) -> None:
            t0 = time.monotonic()
            try:
                net, dnsmasq = _peer_setup(i, dirs[i])
            except Exception as err:  # noqa: BLE001 - re-raised by the main thread below
                errors.append(err)
                return
            made[i] = (net, dnsmasq, t0)

        threads = [threading.Thread(target=setup, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for _, d, _ in made.values():
            stack.callback(_stop, d)
        if errors:
            raise errors[0]
        vms = []
        spawns = []
        for i in range(n):
            net, _, t0 = made[i]
            vm = stack.enter_context(
                boot(guest, net, dirs[i], [_addr(i)[2]], extra=["-cpu", "max", "-device",
                     "pvpanic"], root_ports=5, memory_mib=args.memory,
                     cmdline_extra=f"vl.ready_timeout=60 {KERNEL_EXTRA}")
            )  # fmt: skip
            spawns.append(vm.started - t0)
            vms.append(vm)
        leases = []
        for i, vm in enumerate(vms):
            try:
                leases.append(
                    vm.console.wait_for("LEASE4", _lease_timeout(n)).host_time - made[i][2]
                )
            except ConsoleTimeout:  # say what the peer's dnsmasq did
                log, err = dirs[i] / "dnsmasq.log", dirs[i] / "dnsmasq.err"
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                tail += err.read_text()[-2000:] if err.exists() else ""
                print(
                    f"pod {i}: dnsmasq exit {made[i][1].poll()}; log tail:\n{tail}", file=sys.stderr
                )
                raise
        cpu, rss, pss = _idle([made[i][1].pid for i in range(n)], args.settle, args.window)
    return Side(spawns, leases, cpu, rss, pss)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    """Run every N on both sides; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--counts", default="1,5", help="comma-separated N (README: 1,5,10,20)")
    parser.add_argument("--window", type=float, default=30.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the leases")
    parser.add_argument("--memory", type=int, default=128, help="guest MiB")
    parser.add_argument("--no-status", dest="status", action="store_false",
                        help="do not ask each launcher's status endpoint once")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/density.py: run as root (network namespaces)", file=sys.stderr)
        return 2
    guest = ensure_guest()
    counts = [int(c) for c in args.counts.split(",")]
    print(
        f"{os.cpu_count()} CPUs, guest {args.memory} MiB under TCG, idle window "
        f"{args.window:.0f} s, status asked once per launcher: {args.status}, load average "
        f"{os.getloadavg()[0]:.2f} at the start"
    )
    print("| N | side | start → spawn p50 / p95 | start → DHCPv4 lease p50 / p95 "
          "| RSS per pod (MiB) | PSS per pod (MiB) | idle CPU, all N (ms/s) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="dn-") as tmp:
            ours = launchers(guest, n, Path(tmp), args)
        print(f"N={n} launcher: {ours}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="dp-") as tmp:
            theirs = peers(guest, n, Path(tmp), args)
        print(f"N={n} peer: {theirs}", file=sys.stderr)
        for name, side in (("virt-launcher", ours), ("ip/nft + dnsmasq", theirs)):
            print(
                f"| {n} | {name} | {_pct(side.spawn_s, 0.5) * 1e3:.0f} / "
                f"{_pct(side.spawn_s, 0.95) * 1e3:.0f} ms | {_pct(side.lease_s, 0.5):.1f} / "
                f"{_pct(side.lease_s, 0.95):.1f} s | {statistics.median(side.rss) / MIB:.1f} "
                f"| {statistics.median(side.pss) / MIB:.1f} | {side.cpu_ms_per_s:.2f} |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

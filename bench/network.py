"""Pod-network benchmark: apply time (1/4/16 NICs, masquerade with 1/100/1,000 ports) and
TCP throughput peer → guest side through the bridge binding and through masquerade,
beside a plain veth pair, all in throw-away ``nw-*`` network namespaces.

Run as root from the repository root: ``.venv/bin/python bench/network.py [--seconds 4]``.
Prints one table row per measurement. Apply times are wall-clock for ``apply()`` on a
fresh pod netns (real taps, not the test stand-in) and for the no-op second apply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.network import PlanOptions, apply, discover, plan
from tests.integration.network.netns import Topology, nsrun, sh, wait_for
from tests.integration.network.runner import build_spec


def time_apply(binding: str, nics: int, ports: str, repeat: int) -> tuple[float, float, float]:
    """Median ms of (plan, first apply, second apply) over ``repeat`` fresh topologies."""
    plans, firsts, seconds = [], [], []
    for _ in range(repeat):
        topo = Topology(pod_ifaces=nics)
        try:
            topo.create()
            with tempfile.TemporaryDirectory() as state:
                t0 = time.perf_counter()
                pod = discover(netns=topo.pod, state_dir=Path(state), hostname="bench")
                p = plan(build_spec(binding, nics, ports), pod, PlanOptions())
                t1 = time.perf_counter()
                apply(p, Path(state), netns=topo.pod)
                t2 = time.perf_counter()
                result = apply(p, Path(state), netns=topo.pod)
                t3 = time.perf_counter()
                assert result.changes == 0
            plans.append((t1 - t0) * 1000)
            firsts.append((t2 - t1) * 1000)
            seconds.append((t3 - t2) * 1000)
        finally:
            topo.destroy()
    return statistics.median(plans), statistics.median(firsts), statistics.median(seconds)


def iperf(server_ns: str, client_ns: str, host: str, seconds: int, port: int = 5201) -> float:
    """Gbit/s of one TCP stream client → server."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = nsrun(
            client_ns,
            "iperf3",
            "-c",
            host,
            "-p",
            str(port),
            "-t",
            str(seconds),
            "-J",
            timeout=seconds + 30,
        ).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait(timeout=5)


def throughput(kind: str, seconds: int) -> float:
    """TCP Gbit/s peer → guest side for ``kind`` in {veth, bridge, masquerade}."""
    topo = Topology()
    try:
        topo.create(ipv6=False)
        if kind == "veth":
            return iperf(topo.pod, topo.peer, "10.77.0.5", seconds)
        with tempfile.TemporaryDirectory() as state:
            spec = build_spec(kind, 1, "5201" if kind == "masquerade" else "")
            p = plan(spec, discover(topo.pod, Path(state)), PlanOptions(stand_in_netns=topo.guest))
            apply(p, Path(state), netns=topo.pod)
        nic = p.nics[0]
        assert nic.dhcp4 is not None
        sh("ip", "-n", topo.guest, "addr", "add", str(nic.dhcp4.address), "dev", "vlg0")
        if nic.dhcp4.routers:
            gw = str(nic.dhcp4.routers[0])
            sh("ip", "-n", topo.guest, "route", "add", "default", "via", gw)
        ok = wait_for(
            lambda: (
                nsrun(topo.peer, "ping", "-c1", "-W1", "10.77.0.5", check=False).returncode == 0
            ),
            timeout=10,
        )
        assert ok, f"{kind}: guest side not reachable"
        return iperf(topo.guest, topo.peer, "10.77.0.5", seconds)
    finally:
        topo.destroy()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print("| case | plan ms | apply ms | 2nd apply ms |")
    print("|---|---|---|---|")
    for nics in (1, 4, 16):
        pl, first, second = time_apply("bridge", nics, "", args.repeat)
        print(f"| bridge, {nics} NIC(s) | {pl:.1f} | {first:.1f} | {second:.1f} |", flush=True)
    for count in (1, 100, 1000):
        ports = ",".join(str(20000 + i) for i in range(count))
        pl, first, second = time_apply("masquerade", 1, ports, args.repeat)
        print(
            f"| masquerade, {count} port(s) | {pl:.1f} | {first:.1f} | {second:.1f} |", flush=True
        )
    pl, first, second = time_apply("masquerade", 1, "", args.repeat)
    print(f"| masquerade, all ports | {pl:.1f} | {first:.1f} | {second:.1f} |", flush=True)
    print()
    print(f"| path (1 TCP stream, iperf3 -t {args.seconds}) | Gbit/s |")
    print("|---|---|")
    for kind in ("veth", "bridge", "masquerade"):
        print(f"| {kind} | {throughput(kind, args.seconds):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
from testbed.netns import Topology, nsrun, sh, wait_for
from testbed.runner import build_spec


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


def batch_peer(nics: int, repeat: int) -> float:
    """Median ms for iproute2 ``ip -batch`` doing the bridge binding's link steps."""
    times = []
    for _ in range(repeat):
        topo = Topology(pod_ifaces=nics)
        try:
            topo.create()
            lines = []
            for i in range(nics):
                pod_if = "eth0" if i == 0 else f"net{i}"
                lines += [
                    f"link add vlbr{i} address 02:00:00:00:01:{i:02x} mtu 1440 type bridge",
                    f"tuntap add vltap{i} mode tap vnet_hdr",
                    f"link set vltap{i} mtu 1440 master vlbr{i} up",
                    f"link set {pod_if} down",
                    f"link set {pod_if} address 02:00:00:00:02:{i:02x}",
                    f"addr flush dev {pod_if}",
                    f"link set {pod_if} master vlbr{i} up",
                    f"link set {pod_if} type bridge_slave learning off",
                    f"addr add 169.254.75.{10 + i}/32 dev vlbr{i}",
                    f"link set vlbr{i} up",
                ]
            t0 = time.perf_counter()
            subprocess.run(
                ["ip", "-n", topo.pod, "-batch", "-"],
                input="\n".join(lines) + "\n",
                text=True,
                check=True,
                timeout=60,
            )
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            topo.destroy()
    return statistics.median(times)


def nft_peer(ports: str, repeat: int) -> float:
    """Median ms for ``nft -f`` loading the same masquerade document alone."""
    times = []
    for _ in range(repeat):
        topo = Topology()
        try:
            topo.create()
            with tempfile.TemporaryDirectory() as state:
                pod = discover(netns=topo.pod, state_dir=Path(state), hostname="bench")
                doc = plan(build_spec("masquerade", 1, ports), pod, PlanOptions()).nftables
            t0 = time.perf_counter()
            subprocess.run(
                ["ip", "netns", "exec", topo.pod, "nft", "-f", "-"],
                input=doc,
                text=True,
                check=True,
                timeout=60,
            )
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            topo.destroy()
    return statistics.median(times)


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
        sh("ip", "-n", topo.guest, "addr", "add", str(nic.dhcp4.leases[0].address), "dev", "vlg0")
        if nic.dhcp4.router:
            sh("ip", "-n", topo.guest, "route", "add", "default", "via", str(nic.dhcp4.router))
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
    print("| case | discover+plan ms | apply ms | 2nd apply ms | peer ms | peer is |")
    print("|---|---|---|---|---|---|")
    for nics in (1, 4, 16):
        pl, first, second = time_apply("bridge", nics, "", args.repeat)
        peer = batch_peer(nics, args.repeat)
        print(
            f"| bridge, {nics} NIC(s) | {pl:.1f} | {first:.1f} | {second:.1f} | {peer:.1f} "
            "| `ip -batch`, same link steps, no state/nft |",
            flush=True,
        )
    for count in (1, 100, 1000, 0):
        ports = ",".join(str(20000 + i) for i in range(count))
        pl, first, second = time_apply("masquerade", 1, ports, args.repeat)
        peer = nft_peer(ports, args.repeat)
        label = f"{count} port(s)" if count else "all ports"
        print(
            f"| masquerade, {label} | {pl:.1f} | {first:.1f} | {second:.1f} | {peer:.1f} "
            "| `nft -f` of the same document alone |",
            flush=True,
        )
    print()
    print(f"| path (1 TCP stream, iperf3 -t {args.seconds}) | Gbit/s |")
    print("|---|---|")
    for kind in ("veth", "bridge", "masquerade"):
        print(f"| {kind} | {throughput(kind, args.seconds):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DHCPv6 latency: ``python -m dhcp serve`` against dnsmasq, measured with ``perfdhcp -6``.

Run as root: ``.venv/bin/python bench/dhcp6.py [--period 10] [--rates 200,800]``.
Builds netns ``d6-bs`` (server, veth ``d6bs0`` with fd00:d6::1/64) and ``d6-bc``
(perfdhcp, veth ``d6bc0``), then for each server and each offered rate runs
``perfdhcp -6 -R 1000 -r RATE -p PERIOD -x t`` (1,000 simulated clients, full
SOLICIT-ADVERTISE-REQUEST-REPLY exchanges) and computes p50/p99 of each exchange from
perfdhcp's per-exchange timestamps. Both servers also send router advertisements.

This server is keyed by the frame's source MAC (all perfdhcp clients share the veth
MAC, so one static lease answers all of them, rate limit raised for the run); dnsmasq
hands out addresses from a dynamic range. Prints one table row per server and rate,
then the p50/p99 ratios (this server / dnsmasq).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNS, CNS, SIF, CIF = "d6-bs", "d6-bc", "d6bs0", "d6bc0"
CLIENT_MAC = "52:54:00:d6:bb:01"


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and res.returncode:
        raise SystemExit(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def setup() -> None:
    teardown()
    for ns in (SNS, CNS):
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", SIF, "netns", SNS, "type", "veth",
       "peer", "name", CIF, "netns", CNS, "address", CLIENT_MAC)  # fmt: skip
    sh("ip", "-n", SNS, "addr", "add", "fd00:d6::1/64", "dev", SIF)
    sh("ip", "-n", SNS, "link", "set", SIF, "up")
    sh("ip", "-n", CNS, "link", "set", CIF, "up")
    time.sleep(1.0)


def teardown() -> None:
    for ns in (SNS, CNS):
        sh("ip", "netns", "del", ns, check=False)


def start(name: str, tmp: Path) -> subprocess.Popen[bytes]:
    if name == "virt-launcher":
        argv = [sys.executable, "-m", "dhcp", "serve", "-i", SIF, "--log-level", "warning",
                "--lease6", f"{CLIENT_MAC}=fd00:d6::10/64", "--dns6", "fd00:d6::53",
                "--search", "cluster.local", "--ra", "--rate-limit", "1000000"]  # fmt: skip
    else:
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                f"--interface={SIF}", "--bind-interfaces", "--enable-ra",
                "--dhcp-range=fd00:d6::1000,fd00:d6::ffff,64,1h",
                "--dhcp-option=option6:dns-server,[fd00:d6::53]",
                "--dhcp-option=option6:domain-search,cluster.local",
                f"--dhcp-leasefile={tmp / 'dnsmasq.leases'}", f"--pid-file={tmp / 'dnsmasq.pid'}",
                "--quiet-dhcp6", "--quiet-ra", "--dhcp-authoritative"]  # fmt: skip
    proc = subprocess.Popen(["ip", "netns", "exec", SNS, *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2.0)
    if proc.poll() is not None:
        raise SystemExit(f"{name} exited {proc.returncode} at start")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def perfdhcp(rate: int, period: int) -> dict[str, float]:
    out = sh(
        "ip",
        "netns",
        "exec",
        CNS,
        "timeout",
        str(period + 30),
        "perfdhcp",
        "-6",
        "-l",
        CIF,
        "-R",
        "1000",
        "-r",
        str(rate),
        "-p",
        str(period),
        "-x",
        "t",
        check=False,
    )
    result: dict[str, float] = {}
    for section, key in (("SOLICIT-ADVERTISE", "sa"), ("REQUEST-REPLY", "rr")):
        stats = out.split(f"***Statistics for: {section}***", 1)[-1]
        sent = re.search(r"sent packets: (\d+)", stats)
        recv = re.search(r"received packets: (\d+)", stats)
        result[f"{key}_sent"] = float(sent.group(1)) if sent else 0.0
        result[f"{key}_recv"] = float(recv.group(1)) if recv else 0.0
        stamps = out.split(f"***Timestamps for packets: {section}***", 1)[-1]
        stamps = stamps.split("***Timestamps for packets", 1)[0]
        delays = [
            (float(b) - float(a)) * 1000.0
            for a, b in re.findall(r"sent / received: ([\d.]+) / ([\d.]+)", stamps)
        ]
        if len(delays) >= 2:
            q = statistics.quantiles(delays, n=100)
            result[f"{key}_p50"], result[f"{key}_p99"] = q[49], q[98]
        else:
            result[f"{key}_p50"] = result[f"{key}_p99"] = float("nan")
    rate_m = re.search(r"Rate: ([\d.]+) 4-way", out)
    result["rate"] = float(rate_m.group(1)) if rate_m else 0.0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--period", type=int, default=10)
    ap.add_argument("--rates", default="200,800")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    tmp = Path("/tmp/d6-bench")
    tmp.mkdir(exist_ok=True)
    rows: dict[tuple[str, int], dict[str, float]] = {}
    setup()
    try:
        for name in ("virt-launcher", "dnsmasq"):
            proc = start(name, tmp)
            try:
                perfdhcp(100, 3)  # warm-up: caches, first RA, lease database
                for rate in rates:
                    rows[(name, rate)] = perfdhcp(rate, args.period)
            finally:
                stop(proc)
    finally:
        teardown()
    print(f"{'server':14} {'offered/s':>9} {'done/s':>7} {'SA p50':>7} {'SA p99':>7} "
          f"{'RR p50':>7} {'RR p99':>7} {'SA drop%':>8}")  # fmt: skip
    for (name, rate), r in rows.items():
        drop = 100.0 * (1 - r["sa_recv"] / r["sa_sent"]) if r["sa_sent"] else float("nan")
        print(f"{name:14} {rate:9d} {r['rate']:7.1f} {r['sa_p50']:7.2f} {r['sa_p99']:7.2f} "
              f"{r['rr_p50']:7.2f} {r['rr_p99']:7.2f} {drop:8.2f}")  # fmt: skip
    for rate in rates:
        a, b = rows[("virt-launcher", rate)], rows[("dnsmasq", rate)]
        print(
            f"ratio at {rate}/s (virt-launcher / dnsmasq): "
            f"SA p50 {a['sa_p50'] / b['sa_p50']:.2f}x, SA p99 {a['sa_p99'] / b['sa_p99']:.2f}x, "
            f"RR p50 {a['rr_p50'] / b['rr_p50']:.2f}x, RR p99 {a['rr_p99'] / b['rr_p99']:.2f}x"
        )


if __name__ == "__main__":
    main()

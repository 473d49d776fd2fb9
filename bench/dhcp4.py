"""DHCPv4 throughput and latency: the embedded server vs dnsmasq, driven by perfdhcp.

Run as root: ``.venv/bin/python bench/dhcp4.py [--duration 5] [--rates 500,1000,...]``.
Builds netns ``d4-bs`` (server, 169.254.80.1/16) and ``d4-bc`` (perfdhcp,
169.254.80.2/16) joined by a veth. perfdhcp sends to the server's unicast address, so it
acts as a relay (giaddr = 169.254.80.2); both servers hand out the same pool
169.254.100.0–169.254.199.255/16 to up to 100,000 random client MACs. For each server
and each rate it runs full DORA exchanges for ``duration`` seconds (fresh server per
run, the two servers interleaved at each rate), then prints drops and the
request→reply latency p50/p99 computed from perfdhcp's per-exchange timestamps
(``-x t``) and the server's CPU time per completed exchange (from /proc, so it does not
depend on what else the machine runs). The highest rate with < 1 % drops is "sustained".

dnsmasq runs with ``--no-ping --quiet-dhcp --leasefile-ro`` so it does the same work as
the embedded server (no ICMP probe before offering, no per-lease syslog line, no lease
file rewrite); the embedded server runs at ``--log-level warning`` for the same reason.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNS, CNS, SIF, CIF = "d4-bs", "d4-bc", "d4bs0", "d4bc0"
SERVER, CLIENT = "169.254.80.1", "169.254.80.2"
POOL_START, POOL_END = "169.254.100.0", "169.254.199.255"


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def setup() -> None:
    teardown()
    sh("ip", "netns", "add", SNS)
    sh("ip", "netns", "add", CNS)
    sh("ip", "link", "add", SIF, "netns", SNS, "type", "veth", "peer", "name", CIF, "netns", CNS)
    for ns, ifname, addr in ((SNS, SIF, SERVER), (CNS, CIF, CLIENT)):
        sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/16", "dev", ifname)


def teardown() -> None:
    for ns in (CNS, SNS):
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            sh("kill", "-9", pid, check=False)
        sh("ip", "netns", "del", ns, check=False)


def start_embedded(tmp: Path) -> subprocess.Popen[bytes]:
    log = (tmp / "embedded.log").open("wb")
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            SNS,
            sys.executable,
            "-m",
            "dhcp",
            "serve",
            "--interface",
            SIF,
            "--server-address",
            SERVER,
            "--allow-relay",
            "--pool",
            f"{POOL_START}-{POOL_END}/16",
            "--rate-limit",
            "1000",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    time.sleep(1.0)
    return proc


def start_dnsmasq(tmp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            SNS,
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
            f"--interface={SIF}",
            "--bind-interfaces",
            f"--dhcp-range={POOL_START},{POOL_END},255.255.0.0,24h",
            "--dhcp-lease-max=200000",
            "--no-ping",
            "--quiet-dhcp",
            "--leasefile-ro",
            f"--pid-file={tmp}/dnsmasq.pid",
            "--user=root",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "dnsmasq.log").open("wb"),
    )
    time.sleep(1.0)
    return proc


@dataclass(frozen=True)
class Result:
    server: str
    rate: int
    achieved: float
    drops: float  # percent of all requests (DISCOVER + REQUEST) without a reply
    p50: float  # ms
    p99: float  # ms
    cpu_us: float  # server CPU time (user + system) per completed exchange, microseconds


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (independent of other load on the machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def perfdhcp(rate: int, duration: int) -> tuple[float, float, list[float], int]:
    out = sh(
        "ip",
        "netns",
        "exec",
        CNS,
        "timeout",
        str(duration + 20),
        "perfdhcp",
        "-4",
        "-r",
        str(rate),
        "-p",
        str(duration),
        "-R",
        "100000",
        "-x",
        "t",
        "-l",
        CIF,
        SERVER,
        check=False,
    )
    sent = sum(int(x) for x in re.findall(r"^sent packets: (\d+)", out, re.M))
    received = sum(int(x) for x in re.findall(r"^received packets: (\d+)", out, re.M))
    achieved = re.search(r"^Rate: ([\d.]+)", out, re.M)
    delays = [
        (float(b) - float(a)) * 1000.0
        for a, b in re.findall(r"sent / received: ([\d.]+) / ([\d.]+)", out)
    ]
    drops = 100.0 * (sent - received) / sent if sent else 100.0
    acks = [int(x) for x in re.findall(r"^received packets: (\d+)", out, re.M)][1:2] or [0]
    return (float(achieved.group(1)) if achieved else 0.0), drops, delays, acks[0]


def run(server: str, rate: int, duration: int, tmp: Path) -> Result:
    proc = start_embedded(tmp) if server == "embedded" else start_dnsmasq(tmp)
    try:
        cpu0 = cpu_seconds(proc.pid)
        achieved, drops, delays, exchanges = perfdhcp(rate, duration)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if len(delays) >= 2:
        q = statistics.quantiles(delays, n=100)
        p50, p99 = statistics.median(delays), q[98]
    else:
        p50 = p99 = float("nan")
    cpu_us = cpu * 1e6 / exchanges if exchanges else float("nan")
    return Result(server, rate, achieved, drops, p50, p99, cpu_us)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rates", default="500,1000,1500,2000,3000")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    setup()
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="d4bench") as tmpdir:
            tmp = Path(tmpdir)
            head = ("server", "rate", "achieved", "drops%", "p50 ms", "p99 ms", "cpu us/x")
            print("{:<9} {:>6} {:>9} {:>7} {:>7} {:>7} {:>9}".format(*head))
            failed: set[str] = set()
            for rate in rates:  # interleaved, so both servers see the same background load
                for server in ("embedded", "dnsmasq"):
                    if server in failed:
                        continue
                    r = run(server, rate, args.duration, tmp)
                    results.append(r)
                    print(
                        f"{r.server:<9} {r.rate:>6} {r.achieved:>9.1f} {r.drops:>7.2f} "
                        f"{r.p50:>7.2f} {r.p99:>7.2f} {r.cpu_us:>9.0f}",
                        flush=True,
                    )
                    if r.drops >= 1.0:
                        failed.add(server)
                if len(failed) == 2:
                    break
    finally:
        teardown()
    best: dict[str, Result] = {}
    for r in results:
        if r.drops < 1.0 and (r.server not in best or r.rate > best[r.server].rate):
            best[r.server] = r
    print()
    for name, r in best.items():
        print(f"sustained {name}: {r.rate}/s (p50 {r.p50:.2f} ms, p99 {r.p99:.2f} ms)")
    if "embedded" in best and "dnsmasq" in best:
        print(f"ratio embedded/dnsmasq: {best['embedded'].rate / best['dnsmasq'].rate:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: the status endpoint's latency at 500 requests/s while a real guest runs.

Run as root: ``.venv/bin/python bench/status.py [--rate 500] [--duration 10]``. Boots the
tiny test guest with a real ``virt-launcher run`` (bridge binding, QEMU under TCG, DHCPv4,
DHCPv6 and RA serving in process) in a ``st-bm-*`` netns pair, waits for /readyz, then
from inside the pod netns:

* an open-loop asyncio load generator (``--load`` mode of this script, raw streams) sends
  ``--rate`` GET/s on keep-alive connections, latency measured from each request's
  *scheduled* send time (no coordinated omission), for /status, /metrics, /healthz;
* the peer: busybox httpd serving the same /status JSON as a static file, same load;
* ``wrk -t1 -c4 -d<duration>s --latency`` on /status and the peer, first paced to ``--rate``
  with a Lua ``delay()`` (Debian's wrk has no ``-R``), then unpaced for the saturation rate.

Prints one table row per target (p50/p90/p99/p99.9/max in ms, achieved rate, errors) and
the launcher's RSS/CPU over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
POD, PEER = "st-bm-pod", "st-bm-peer"
POD4, PEER4 = "10.90.0.5", "10.90.0.1"
POD6, PEER6 = "fd90::5", "fd90::1"
LISTEN = "127.0.0.1:8186"
STATIC_PORT = 8187
CONNECTIONS = 8

SPEC = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: st-bench, namespace: bench}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    cpu: {cores: 1}
    memory: {guest: 256Mi}
    firmware:
      kernelBoot:
        container: {image: localhost/st:latest, kernelPath: /vmlinuz, initrdPath: /initrd.gz}
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1"
    devices:
      interfaces: [{name: pod, bridge: {}}]
  networks: [{name: pod, pod: {}}]
"""


# ---------------------------------------------------------------- load generator (in netns)


async def _load(url: str, rate: float, duration: float) -> dict[str, object]:
    """Open loop: request i is due at start + i/rate; CONNECTIONS keep-alive workers take
    due requests in order. Raw asyncio streams keep the generator's own cost small."""
    host, _, rest = url.removeprefix("http://").partition("/")
    addr, _, port = host.rpartition(":")
    request = f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def worker() -> None:
        nonlocal errors, next_i
        reader, writer = await asyncio.open_connection(addr, int(port))
        try:
            while next_i < total:
                i = next_i
                next_i += 1
                due = start + i / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if reader.at_eof():  # the server closed after the last answer: reconnect
                    writer.close()
                    reader, writer = await asyncio.open_connection(addr, int(port))
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                status = int(head[9:12])
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                else:
                    await asyncio.wait_for(reader.read(), 5)  # body until close
                if re.search(rb"(?i)connection:\s*close", head):
                    await reader.read()
                if status >= 500:
                    errors += 1
                latencies.append(loop.time() - due)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    elapsed = loop.time() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "url": url,
        "sent": total,
        "ok": len(latencies),
        "errors": errors,
        "rate": round(total / elapsed, 1),
        "p50": round(pct(50), 2),
        "p90": round(pct(90), 2),
        "p99": round(pct(99), 2),
        "p999": round(pct(99.9), 2),
        "max": round(latencies[-1] * 1000, 2),
    }


# ---------------------------------------------------------------- orchestration (host)


def sh(*argv: str, timeout: float = 30, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def netns_up() -> None:
    netns_down()
    sh("ip", "netns", "add", POD)
    sh("ip", "netns", "add", PEER)
    for ns in (POD, PEER):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", POD, "link", "add", "eth0", "type", "veth", "peer", "name", "stbq0",
       "netns", PEER)  # fmt: skip
    sh("ip", "-n", POD, "addr", "add", f"{POD4}/24", "dev", "eth0")
    sh("ip", "-n", POD, "addr", "add", f"{POD6}/64", "dev", "eth0", "nodad")
    sh("ip", "-n", POD, "link", "set", "eth0", "up")
    sh("ip", "-n", PEER, "addr", "add", f"{PEER4}/24", "dev", "stbq0")
    sh("ip", "-n", PEER, "addr", "add", f"{PEER6}/64", "dev", "stbq0", "nodad")
    sh("ip", "-n", PEER, "link", "set", "stbq0", "up")
    sh("ip", "-n", POD, "route", "add", "default", "via", PEER4)
    sh("ip", "-n", POD, "-6", "route", "add", "default", "via", PEER6)


def netns_down() -> None:
    for ns in (POD, PEER):
        sh("ip", "netns", "del", ns, check=False)


def in_pod(*argv: str, timeout: float = 60) -> str:
    return sh("ip", "netns", "exec", POD, *argv, timeout=timeout)


def wait_ready(proc: subprocess.Popen[bytes], err: Path, timeout: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"launcher exited:\n{err.read_text()[-2000:]}")
        done = subprocess.run(
            ["ip", "netns", "exec", POD, "curl", "-sf", "--max-time", "2",
             f"http://{LISTEN}/status"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            doc = json.loads(done.stdout)
            iface = doc["interfaces"][0] if doc["interfaces"] else {}
            if doc["ready"] and len(iface.get("leases", [])) >= 2:
                return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit("the guest never got both leases")


def load_in_pod(url: str, rate: float, duration: float) -> dict[str, object]:
    out = in_pod(sys.executable, str(Path(__file__).resolve()), "--load", url,
                 "--rate", str(rate), "--duration", str(duration),
                 timeout=duration * 3 + 30)  # fmt: skip
    return dict(json.loads(out.strip().splitlines()[-1]))


def wrk_in_pod(url: str, duration: float, paced_rate: float | None = None) -> dict[str, str]:
    """wrk -t1 -c4; with ``paced_rate`` each connection waits between a response and its
    next request (wrk's Lua ``delay()``, Debian's wrk has no -R) so that 4 connections at
    a ~0.8 ms service time send about ``paced_rate`` requests/s, never more."""
    argv = ["wrk", "-t1", "-c4", f"-d{int(duration)}s", "--latency"]
    script = None
    if paced_rate is not None:
        script = Path(tempfile.mkstemp(prefix="st-wrk-", suffix=".lua")[1])
        pause_ms = max(0.0, 4000.0 / paced_rate - 0.8)
        script.write_text(f"function delay() return {pause_ms:.3f} end\n")
        argv += ["-s", str(script)]
    try:
        out = in_pod(*argv, url, timeout=duration + 30)
    finally:
        if script is not None:
            script.unlink()
    res: dict[str, str] = {}
    for key in ("50%", "90%", "99%"):
        m = re.search(rf"^\s*{re.escape(key)}\s+(\S+)", out, re.M)
        res[key] = m.group(1) if m else "?"
    m = re.search(r"Requests/sec:\s+(\S+)", out)
    res["rps"] = m.group(1) if m else "?"
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = m.group(1) if m else "0"
    return res


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of ``pid``."""
    import psutil

    p = psutil.Process(pid)
    t = p.cpu_times()
    return p.memory_info().rss / 2**20, t.user + t.system


def row(name: str, r: dict[str, object], peer: str = "") -> str:
    return (
        f"| {name} | {r['rate']} | {r['p50']} | {r['p90']} | {r['p99']} | {r['p999']} | "
        f"{r['max']} | {r['errors']} | {peer} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(_load(args.load, args.rate, args.duration))))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench/status.py needs root (network namespaces)")
    from testbed.guest.build import ensure_guest

    image = ensure_guest()
    tmp = Path(tempfile.mkdtemp(prefix="st-bench-"))
    volumes = tmp / "volumes" / "kernel"
    volumes.mkdir(parents=True)
    (volumes / "vmlinuz").symlink_to(image.kernel)
    (volumes / "initrd.gz").symlink_to(image.initrd)
    (tmp / "vm.yaml").write_text(SPEC)
    err = tmp / "launcher.err"
    netns_up()
    httpd: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(err, "wb") as err_file:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", POD, sys.executable, "-m", "launcher", "run",
                 "--spec", str(tmp / "vm.yaml"), "--state-dir", str(tmp / "state"),
                 "--volumes-dir", str(tmp / "volumes"), "--termination-log", str(tmp / "t"),
                 "--accel", "tcg", "--vmm-user", "keep", "--status-listen", LISTEN, "--console-log",
                 str(tmp / "console.log")],
                stdout=subprocess.DEVNULL, stderr=err_file, cwd=REPO,
            )  # fmt: skip
        boot_s = wait_ready(proc, err)
        status_doc = in_pod("curl", "-sf", f"http://{LISTEN}/status")
        www = tmp / "www"
        www.mkdir()
        (www / "status").write_text(status_doc)
        busybox = shutil.which("busybox") or "busybox"
        httpd = subprocess.Popen(
            ["ip", "netns", "exec", POD, busybox, "httpd", "-f", "-p",
             f"127.0.0.1:{STATIC_PORT}", "-h", str(www)],
        )  # fmt: skip
        time.sleep(0.5)
        load_in_pod(f"http://{LISTEN}/status", args.rate, 3.0)  # warm-up, not counted
        rss0, cpu0 = proc_stats(proc.pid)
        t0 = time.monotonic()
        results = []
        for path in ("/status", "/metrics", "/healthz"):
            r = load_in_pod(f"http://{LISTEN}{path}", args.rate, args.duration)
            results.append((f"launcher GET {path}", r, ""))
        r = load_in_pod(f"http://127.0.0.1:{STATIC_PORT}/status", args.rate, args.duration)
        results.append(("peer: busybox httpd, static copy of /status", r, "peer"))
        rss1, cpu1 = proc_stats(proc.pid)
        load_s = time.monotonic() - t0
        wr = wrk_in_pod(f"http://{LISTEN}/status", args.duration, args.rate)
        wrp = wrk_in_pod(f"http://127.0.0.1:{STATIC_PORT}/status", args.duration, args.rate)
        w = wrk_in_pod(f"http://{LISTEN}/status", args.duration)
        wp = wrk_in_pod(f"http://127.0.0.1:{STATIC_PORT}/status", args.duration)
        rss2, _ = proc_stats(proc.pid)
        doc = json.loads(in_pod("curl", "-sf", f"http://{LISTEN}/status"))
        print(
            f"guest ready (both leases) {boot_s:.1f} s after launcher start; "
            f"state {doc['hypervisor']['state']}, DHCP serving "
            f"{doc['interfaces'][0]['dhcp']['serving']}, /status body {len(status_doc)} B"
        )
        print()
        print(f"open loop, {args.rate:.0f} req/s for {args.duration:.0f} s, {CONNECTIONS} "
              "keep-alive connections, latency from scheduled send (ms):")  # fmt: skip
        print("| target | achieved req/s | p50 | p90 | p99 | p99.9 | max | errors | |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r, peer in results:
            print(row(name, r, peer))
        print()
        print(f"wrk -t1 -c4 -d{int(args.duration)}s --latency, paced by Lua delay() to "
              f"<= {args.rate:.0f} req/s, then unpaced (saturation):")  # fmt: skip
        print("| target | req/s | p50 | p90 | p99 | non-2xx |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| launcher /status, paced | {wr['rps']} | {wr['50%']} | {wr['90%']} | "
              f"{wr['99%']} | {wr['non2xx']} |")  # fmt: skip
        print(f"| peer: busybox httpd static, paced | {wrp['rps']} | {wrp['50%']} | "
              f"{wrp['90%']} | {wrp['99%']} | {wrp['non2xx']} |")  # fmt: skip
        print(f"| launcher /status, unpaced | {w['rps']} | {w['50%']} | {w['90%']} | {w['99%']} | "
              f"{w['non2xx']} |")  # fmt: skip
        print(f"| peer: busybox httpd static, unpaced | {wp['rps']} | {wp['50%']} | {wp['90%']} | "
              f"{wp['99%']} | {wp['non2xx']} |")  # fmt: skip
        print()
        print(f"launcher RSS {rss0:.1f} MiB before load, {rss1:.1f} after the open-loop runs, "
              f"{rss2:.1f} after wrk; CPU during the open-loop runs "
              f"{(cpu1 - cpu0) / load_s * 100:.0f} % of one core")  # fmt: skip
        return 0
    finally:
        if httpd is not None:
            httpd.terminate()
            httpd.wait(10)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        netns_down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

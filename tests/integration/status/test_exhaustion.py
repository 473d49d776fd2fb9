"""The status endpoint at the fd limit (issue 16): held connections cannot starve /healthz,
and the log stays a few lines long.

A real launcher status server runs in a child process whose soft ``RLIMIT_NOFILE`` is cut
to 1024 (the cap is then 512 connections); the test holds twice the fd limit in
connections on loopback (bounded: 2,048), then asks ``/healthz`` on a fresh connection.
Without the cap every accept fails with EMFILE and the probe times out.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.status.conncap import connection_limit

REPO = Path(__file__).resolve().parents[3]
NOFILE = 1024
HELD = 2 * NOFILE

SERVER = f"""
import asyncio, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, hard))
from launcher import logs
logs.configure("info")
from launcher.status.model import StatusBoard
from launcher.status.server import StatusServer

async def main():
    async with StatusServer(StatusBoard(), "127.0.0.1:0") as server:
        print(server.port, flush=True)
        await asyncio.sleep(120)

asyncio.run(main())
"""

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    stderr = tmp_path / "server.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=err, cwd=REPO
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the child prints its port once it listens
        assert line.strip().isdigit(), stderr.read_text()[-2000:]
        yield int(line), stderr
    finally:
        proc.kill()
        proc.wait(10)


def healthz(port: int, timeout: float) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_cap_is_below_the_fd_limit() -> None:
    assert connection_limit(NOFILE) == 512 < NOFILE
    assert connection_limit(4096) == 1024
    assert connection_limit(1 << 20) == 1024
    assert connection_limit(600) == 88
    assert connection_limit(20) == 8  # the floor


def test_healthz_answers_with_held_connections_beyond_the_fd_limit(
    server: tuple[int, Path],
) -> None:
    port, stderr = server
    assert healthz(port, 5)[0] == 200  # the HTTP stack is loaded
    held: list[socket.socket] = []
    opened = time.monotonic()
    try:
        deadline = time.monotonic() + 60
        for _ in range(HELD):
            assert time.monotonic() < deadline
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # let the server accept (and shed) them
        began = time.monotonic()
        status, body = healthz(port, 5)
        took = time.monotonic() - began
    finally:
        for sock in held:
            sock.close()
    assert status == 200 and body["status"] == "ok", body
    assert took < 2.0, took
    lines = stderr.read_text().splitlines()
    records = [json.loads(ln) for ln in lines if ln.startswith("{")]
    capped = [r for r in records if r.get("event") == "status-connections-capped"]
    windows = 1 + int((time.monotonic() - opened) // 10)
    assert 1 <= len(capped) <= 5 * windows, (len(capped), windows)  # 5 per condition per 10 s
    print(f"{HELD} connections held in {began - opened:.1f} s; {len(capped)} log lines")
    assert not [r for r in records if r["level"] == "error"], records[:5]
    assert len(lines) < 5 + 5 * windows, lines[:20]
    assert os.path.getsize(stderr) < 20_000

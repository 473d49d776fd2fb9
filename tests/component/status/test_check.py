"""``virt-launcher status --check live|ready``, the pod's exec probe: against the real
status endpoint (the run's socket-activated task in a fresh launcher process, and
``StatusServer`` in process), a silent peer, a non-HTTP peer and nothing at all; and what
the probe process imports (it runs every few seconds in the VM's container)."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.network.plan import PlanOptions
from launcher.status import StatusBoard, StatusServer
from launcher.status import listen as listen_module
from launcher.status.client import EXIT_NOT_OK, check

pytestmark = pytest.mark.timeout(60)

LAUNCHER = """
import asyncio, sys
from launcher.status.model import StatusBoard
from launcher.status.task import status_task

asyncio.run(status_task(sys.argv[1])(StatusBoard()))
"""


def probe(listen: str, which: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", "status", "--status-listen", listen, "--check", which],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def launcher_endpoint(tmp_path: Path) -> Iterator[str]:
    """The run's status task in its own process (socket bound at once, HTTP stack on first
    connection), serving a board the run has told nothing yet."""
    path = tmp_path / "status.sock"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LAUNCHER), f"unix:{path}"])
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert proc.poll() is None, "the status task ended"
            assert time.monotonic() < deadline, "the status socket never appeared"
            time.sleep(0.02)
        yield f"unix:{path}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_probe_processes_against_a_starting_launcher(launcher_endpoint: str) -> None:
    live = probe(launcher_endpoint, "live")
    assert (live.returncode, live.stdout) == (0, "live: ok\n"), live.stderr
    ready = probe(launcher_endpoint, "ready")
    assert ready.returncode == EXIT_NOT_OK == 7
    assert ready.stdout.startswith("not ready: NetworkApplied: NotApplied"), ready.stdout


async def test_readiness_follows_the_board_over_tcp() -> None:
    board = StatusBoard()
    async with StatusServer(board, "127.0.0.1:0", ttl=0) as server:
        where = f"127.0.0.1:{server.port}"
        out = io.StringIO()
        assert await asyncio.to_thread(check, where, "ready", out) == EXIT_NOT_OK
        assert await asyncio.to_thread(check, where, "live", out) == 0
        assert out.getvalue().splitlines()[-1] == "live: ok"


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def not_http_peer() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(5)
    sock.close()


def test_unreachable_silent_and_foreign_endpoints_are_exit_6(
    silent_peer: int, not_http_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = free.getsockname()[1]
    out = io.StringIO()
    assert check(f"127.0.0.1:{nobody}", "live", out) == 6
    assert "cannot read /healthz at 127.0.0.1:" in capsys.readouterr().err
    started = time.monotonic()
    assert check(f"127.0.0.1:{silent_peer}", "ready", out, timeout_s=0.5) == 6
    assert time.monotonic() - started < 3  # bounded: kubelet's timeoutSeconds is 5
    assert check(f"127.0.0.1:{not_http_peer}", "live", out) == 6
    assert "not HTTP" in capsys.readouterr().err
    assert out.getvalue() == ""


def test_the_probe_imports_no_http_stack_and_no_network_package() -> None:
    code = textwrap.dedent(
        """
        import sys
        from launcher import cli
        rc = cli.main(["status", "--status-listen", "127.0.0.1:1", "--check", "live"])
        heavy = ("aiohttp", "asyncio", "launcher.network", "pyroute2", "yaml", "psutil")
        print(rc, sorted(m for m in heavy if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stdout.strip() == "6 []", (done.stdout, done.stderr)


def test_the_default_endpoint_port_is_the_one_masquerade_never_dnats() -> None:
    """One definition (launcher.status.listen), imported by the network plan."""
    assert listen_module.parse_listen(listen_module.DEFAULT_LISTEN).port == 8186
    assert PlanOptions().status_port == listen_module.DEFAULT_STATUS_PORT

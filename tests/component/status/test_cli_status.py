"""The CLI's status parts: `status` subcommand, --status-listen on run and status, --json."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from launcher import cli
from launcher.errors import EXIT_INVALID, EXIT_STATUS_SERVER


def test_parse_status_and_run_options() -> None:
    opts = cli.parse_args(["status", "--status-listen", "unix:/run/s.sock", "--json"])
    assert opts.command == "status"
    assert opts.status_args == {"status_listen": "unix:/run/s.sock", "json": True}
    opts = cli.parse_args(["run", "--status-listen", "127.0.0.1:9000"])
    assert opts.status_args == {"status_listen": "127.0.0.1:9000"}
    assert "status_listen" not in opts.run_args
    assert cli.parse_args(["status"]).status_args == {}
    with pytest.raises(SystemExit):
        cli.parse_args(["run", "--json"])  # --json belongs to `status` only


def test_status_refuses_a_non_loopback_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--status-listen", "10.0.0.1:8186"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "'10.0.0.1' is not a loopback address" in err


def test_status_with_nothing_listening_is_exit_6(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port that is certainly closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["status", "--status-listen", f"127.0.0.1:{port}"]) == EXIT_STATUS_SERVER
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


DOC = {
    "time": "2026-11-23T20:00:00.000Z",
    "vm": "ns/vm",
    "phase": "Starting",
    "ready": False,
    "notReadyReason": "HypervisorRunning: Created: qemu is Created",
    "conditions": [
        {
            "type": "NetworkApplied",
            "status": "True",
            "reason": "Applied",
            "message": "",
            "lastTransitionTime": "2026-11-23T19:59:59.000Z",
        }
    ],
    "launcher": {
        "pid": 1,
        "startedAt": "2026-11-23T19:59:58.000Z",
        "uptimeSeconds": 2.0,
        "rssBytes": 31457280,
        "cpuSeconds": 0.5,
        "loopLagSeconds": 0.0,
        "timeToReadySeconds": None,
    },
    "hypervisor": None,
    "interfaces": [],
    "nftables": {"digest": None},
    "events": [],
}


@pytest.fixture
def fake_launcher() -> Iterator[int]:
    """A plain http.server answering /status with DOC (the client's side of the contract)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(DOC).encode()
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            del args

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_status_prints_table_or_json(fake_launcher: int) -> None:
    from launcher.status.client import show

    out = io.StringIO()
    assert show(f"127.0.0.1:{fake_launcher}", out) == 0
    text = out.getvalue()
    assert text.startswith(
        "VM ns/vm: Starting, not ready (HypervisorRunning: Created: qemu is Created)\n"
    )
    assert "hypervisor  not started" in text
    assert "RSS 30.0 MiB" in text
    out = io.StringIO()
    assert show(f"127.0.0.1:{fake_launcher}", out, as_json=True) == 0
    assert json.loads(out.getvalue()) == DOC

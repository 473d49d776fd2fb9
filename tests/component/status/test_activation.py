"""The status task binds its socket at once but loads the HTTP stack only for the first
connection, which it then answers; a bind failure still fails the task at once. Runs in a
fresh interpreter: this test process has imported everything long ago."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.errors import StatusServerError
from launcher.status.model import StatusBoard
from launcher.status.task import status_task

SCRIPT = """
import asyncio, sys
from pathlib import Path
from launcher.status.model import StatusBoard
from launcher.status.task import status_task

HEAVY = ("aiohttp", "prometheus_client", "psutil", "pyroute2", "launcher.status.server")

async def main(path):
    board = StatusBoard()
    task = asyncio.create_task(status_task(f"unix:{path}")(board), name="status")
    for _ in range(200):
        if Path(path).exists():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    idle = sorted(m for m in HEAVY if m in sys.modules)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    status_line = (await asyncio.wait_for(reader.readline(), 20)).decode().strip()
    await reader.read()
    writer.close()
    print(idle, status_line, "aiohttp" in sys.modules, "launcher.status.server" in sys.modules)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

asyncio.run(main(sys.argv[1]))
"""


def test_http_stack_loads_on_the_first_connection_and_answers_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "status.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # loaded on the first connection, and it is not aiohttp (launcher.status.http)
    assert done.stdout.split() == ["[]", "HTTP/1.1", "200", "OK", "False", "True"]


async def test_a_taken_port_fails_the_status_task_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StatusServerError, match=f"127.0.0.1:{port}"):
            await status_task(f"127.0.0.1:{port}")(StatusBoard())

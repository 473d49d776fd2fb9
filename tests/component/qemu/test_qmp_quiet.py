"""qemu.qmp's own log lines for expected cancellations stay at DEBUG (issue 16).

A real unix socket that accepts and never greets stands in for a QEMU whose QMP is not
answering yet; QmpSession.open's deadline cancels the negotiation. qemu.qmp logs that as
"Negotiation failed: CancelledError" at ERROR; the launcher's log must not show it as an
error (it retries, and reports its own one-line error if the socket never answers).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hypervisor.errors import HypervisorError
from hypervisor.qemu.qmp import QmpSession


async def test_a_cancelled_negotiation_is_not_an_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "qmp.sock"
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        del reader
        held.append(writer)  # accept, never greet

    server = await asyncio.start_unix_server(silent, path=str(path))
    try:
        with (
            caplog.at_level(logging.DEBUG),
            caplog.at_level(logging.DEBUG, logger="qemu"),  # launcher.logs may have raised it
            pytest.raises(HypervisorError),
        ):
            await QmpSession.open(str(path), wait_s=0.5)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    qmp_lines = [r for r in caplog.records if r.name.startswith("qemu")]
    assert any("CancelledError" in r.getMessage() for r in qmp_lines)  # it was said…
    assert all(r.levelno == logging.DEBUG for r in qmp_lines)  # …at DEBUG only

#!/usr/bin/env python3
"""A stand-in ``qemu-system-x86_64`` that serves QMP for states real QEMU cannot reach here.

Used by ``test_adapter_faults.py`` for what this machine cannot produce with the real
binary: a KVM internal error (KVM cannot run guests here), a command QEMU never answers,
and QEMU dying in the middle of a command. Everything else is tested against real QEMU.

The wire format follows QEMU 7.2 as captured from the real binary on this machine: the
greeting, ``{"return": {}}`` for ``qmp_capabilities``, ``CommandNotFound`` before
negotiation, ``query-status`` ``{"status", "singlestep", "running"}``, events
``{"timestamp": {"seconds", "microseconds"}, "event", "data"}``, and on ``quit`` the
SHUTDOWN event (``host-qmp-quit``) before the empty return. Like QEMU's parser it needs no
framing between the client's JSON objects (qemu.qmp sends them without newlines).

It reads the socket path from ``-qmp unix:<path>,server=on,wait=off`` and the scenario
from ``FAKE_QEMU_SCENARIO``: ``internal-error`` (STOP shortly after the first
``query-status``, then run state ``internal-error``), ``hang`` (``system_powerdown`` is
never answered) or ``crash`` (``system_powerdown`` makes it exit 1 with a stderr line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

GREETING = {
    "QMP": {
        "version": {
            "qemu": {"micro": 22, "minor": 2, "major": 7},
            "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
        },
        "capabilities": ["oob"],
    }
}


def qmp_path(argv: list[str]) -> str:
    value = argv[argv.index("-qmp") + 1]
    assert value.startswith("unix:") and value.endswith(",server=on,wait=off"), value
    return value[len("unix:") : -len(",server=on,wait=off")].replace(",,", ",")


def event(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    now = time.time()
    stamp = {"seconds": int(now), "microseconds": int((now % 1) * 1e6)}
    return {"timestamp": stamp, "event": name, "data": data or {}}


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """JSON objects as QEMU's streaming parser sees them: no framing, no newline needed."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            return
        buffer += chunk.decode()
        while buffer.strip():
            buffer = buffer.lstrip()
            try:
                obj, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # incomplete: read more
            buffer = buffer[end:]
            yield obj


class Fake:
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.status = "running"
        self.done = asyncio.Event()
        self.exit_code = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj).encode() + b"\r\n")

        send(GREETING)
        negotiated = False
        async for msg in messages(reader):
            if self.done.is_set():
                return
            cmd = msg.get("execute")
            reply: dict[str, Any] = {"return": {}}
            if "id" in msg:
                reply["id"] = msg["id"]
            if cmd == "qmp_capabilities":
                negotiated = True
            elif not negotiated:
                reply = {
                    "error": {
                        "class": "CommandNotFound",
                        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
                    }
                }
            elif cmd == "query-status":
                running = self.status == "running"
                reply["return"] = {"status": self.status, "singlestep": False, "running": running}
                if self.scenario == "internal-error" and running:
                    asyncio.get_running_loop().call_later(0.2, self.internal_error, send)
            elif cmd == "system_powerdown" and self.scenario == "hang":
                continue
            elif cmd == "system_powerdown" and self.scenario == "crash":
                sys.stderr.write("qemu-system-x86_64: fake crash while powering down\n")
                sys.stderr.flush()
                self.exit_code = 1
                self.done.set()
                return
            elif cmd == "quit":
                send(event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
                send(reply)
                self.done.set()  # exit even if the client hangs up before reading the reply
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return
            else:
                reply = {
                    "error": {
                        "class": "CommandNotFound",
                        "desc": f"The command {cmd} has not been found",
                    }
                }
            send(reply)
            await writer.drain()

    def internal_error(self, send: Any) -> None:
        if self.status == "running":
            self.status = "internal-error"
            send(event("STOP"))


async def main() -> int:
    path = qmp_path(sys.argv)
    fake = Fake(os.environ.get("FAKE_QEMU_SCENARIO", ""))
    server = await asyncio.start_unix_server(fake.serve, path=path)
    async with server:
        await asyncio.wait_for(fake.done.wait(), 60)
    return fake.exit_code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

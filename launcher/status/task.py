"""The status endpoint plugged into ``virt-launcher run``: the ``status`` task.

:func:`status_task` returns the coroutine ``launcher.run`` starts as its ``status`` task
(``run(options, status=status_task(listen))``), given the run's
:class:`~launcher.status.model.StatusBoard`. The run TELLS the board every change (phase,
spec, plan, network applied, servers, hypervisor); this task only serves it, and copies
the hypervisor's lifecycle events into it (it waits for the hypervisor object on an
event, never on a timer), so conditions carry their transition times and
``timeToReadySeconds`` is measured, not guessed.

The endpoint is socket-activated inside the process: the task binds the listening socket
at once (so the port is taken, and a bind failure ends the run with exit 6, as before),
but imports the HTTP side (:mod:`launcher.status.server`: its small HTTP server,
prometheus-client, the netlink reader — ≈9 MiB of RSS, more than a third of a running
launcher; it was ≈17 MiB with aiohttp) only when the first connection is waiting on that
socket, and then serves the same socket, which accepts that connection. A VM nobody
debugs never pays for the endpoint; the first request waits for the import once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from launcher.errors import EXPECTED_ERRORS

from .listen import Listen, bind, parse_listen
from .model import StatusBoard

if TYPE_CHECKING:
    from .server import StatusServer

__all__ = ["status_task"]

log = logging.getLogger(__name__)


async def _follow_events(board: StatusBoard) -> None:
    """Copy the hypervisor's lifecycle events into the board until the VMM exits."""
    hv = await board.wait_hypervisor()
    try:
        async for ev in hv.events():
            board.lifecycle(ev)
    except EXPECTED_ERRORS as err:  # the supervisor reports VMM failures; status only shows them
        log.warning("status: lifecycle events ended: %s", err, extra={"event": "status-events"})


async def _first_connection(sock: socket.socket) -> None:
    """Wait until a connection is pending on the listening ``sock`` (without accepting it)."""
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not waiting.done():
            waiting.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await waiting
    finally:
        loop.remove_reader(sock.fileno())


def _server_class() -> type[StatusServer]:
    from .server import StatusServer  # noqa: PLC0415 - startup: status HTTP stack

    return StatusServer


def status_task(
    listen: Listen | str, *, netns: str | None = None
) -> Callable[[StatusBoard], Coroutine[Any, Any, None]]:
    """The ``status`` task for :func:`launcher.run.run`: serve ``board`` until cancelled."""
    where = parse_listen(listen) if isinstance(listen, str) else listen

    async def serve(board: StatusBoard) -> None:
        sock = bind(where)
        server: StatusServer | None = None
        port = sock.getsockname()[1] if where.path is None else None
        log.info(
            "status endpoint listening",
            extra={"event": "status-listening", "listen": str(where), "port": port},
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_follow_events(board), name="status-events")
                await _first_connection(sock)
                server_class = await asyncio.to_thread(_server_class)
                server = server_class(board, where, netns=netns, sock=sock)
                await server.start()
                await asyncio.get_running_loop().create_future()
        finally:
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
            sock.close()

    return serve

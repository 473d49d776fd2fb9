"""A small typed QMP session for the QEMU adapter, on top of the ``qemu.qmp`` library.

:class:`QmpSession` wraps ``qemu.qmp.QMPClient`` (QEMU's own asyncio client: greeting,
``qmp_capabilities`` negotiation, command ids, event routing, SCM_RIGHTS) so that its
objects and exceptions never leave this module: commands return plain JSON values,
failures raise :class:`~hypervisor.errors.HypervisorError` naming the command, and events
come out as frozen :class:`QmpEvent` values. Only :mod:`hypervisor.qemu.adapter` uses it.

``qemu.qmp`` fits: it is maintained by the QEMU project, typed, asyncio-native and small
(no extra dependencies). What it lacks is waiting for a socket that QEMU has not created
yet (``-qmp …,server=on,wait=off`` appears some milliseconds after spawn) and timeouts on
commands; :meth:`QmpSession.open` and :meth:`QmpSession.execute` add both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    QMPClient,
    Runstate,
)
from qemu.qmp import QMPError as _QMPError

from hypervisor.errors import HypervisorError

__all__ = ["QmpSession", "QmpEvent", "QmpGoneError"]

log = logging.getLogger(__name__)

_RETRY = 0.02  # seconds between connection attempts while QEMU creates the socket


class _Quiet(logging.Filter):
    """Demotes two of ``qemu.qmp``'s own log lines to DEBUG: a negotiation cut short by
    cancellation (a stop during start-up: not an error) and the late answer to a command
    that timed out (the liveness ping of a VMM that was frozen) being dropped."""

    _EXPECTED = ("CancelledError", "Unknown ID")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(
            text in record.getMessage() for text in self._EXPECTED
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_QUIET = _Quiet()


def _exists(path: str) -> bool:
    """Whether the socket file exists yet (a single stat: cheap enough for the event loop)."""
    return os.path.exists(path)


class QmpGoneError(HypervisorError):
    """The QMP connection closed before the command was answered (QEMU exited)."""


@dataclass(frozen=True, slots=True)
class QmpEvent:
    """One QMP event: its name (``SHUTDOWN``…), QEMU's epoch timestamp and its data."""

    name: str
    timestamp: float
    data: Mapping[str, Any] = field(default_factory=dict)


class QmpSession:
    """One negotiated QMP connection; create it with :meth:`open`."""

    def __init__(self, client: QMPClient, listener: EventListener, path: str) -> None:
        self._client = client
        self._listener = listener
        self._path = path

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        wait_s: float,
        alive: Callable[[], bool] = lambda: True,
        name: str = "virt-launcher",
    ) -> QmpSession:
        """Connect to QEMU's QMP socket at ``path`` and negotiate capabilities.

        Retries while the socket does not exist or refuses connections, for at most
        ``wait_s`` seconds, and stops early when ``alive()`` turns false (QEMU exited).
        """
        deadline = time.monotonic() + wait_s
        last: BaseException | None = None
        while True:
            if not alive():
                raise HypervisorError(f"QEMU exited before its QMP socket {path} accepted")
            if _exists(path):  # before that, retry without qemu.qmp logging an error
                client = QMPClient(name)
                client.logger.addFilter(_QUIET)
                try:
                    async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                        await client.connect(path)
                except ConnectError as err:
                    last = err.exc
                except TimeoutError as err:
                    last = err
                    await client.disconnect()
                else:
                    listener = EventListener()
                    client.register_listener(listener)
                    log.debug("--> QMP connected", extra={"qmp": path})
                    return cls(client, listener, path)
            else:
                last = FileNotFoundError(f"{path} does not exist")
            if time.monotonic() + _RETRY >= deadline:
                raise HypervisorError(
                    f"QMP socket {path} did not accept a connection within {wait_s:.1f}s"
                    f" (last error: {last})"
                ) from last
            await asyncio.sleep(_RETRY)

    async def execute(
        self, command: str, arguments: Mapping[str, object] | None = None, *, limit_s: float = 10.0
    ) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises HypervisorError naming the command on an error reply or after ``limit_s``
        seconds, and :class:`QmpGoneError` when QEMU closed the connection first.
        """
        log.debug("--> %s", command, extra={"qmp_args": dict(arguments or {})})
        try:
            async with asyncio.timeout(limit_s):
                result = await self._client.execute(command, arguments)
        except ExecuteError as err:
            raise HypervisorError(
                f"QMP command {command} failed: {err.error_class}: {err.error.error.desc}"
            ) from err
        except ExecInterruptedError as err:
            raise QmpGoneError(f"QMP connection closed while {command} was running") from err
        except TimeoutError as err:
            raise HypervisorError(f"QMP command {command} got no answer within {limit_s}s") from err
        except _QMPError as err:
            raise QmpGoneError(f"QMP command {command} could not be sent: {err}") from err
        log.debug("<-- %s", command, extra={"qmp_return": result})
        return result

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU with SCM_RIGHTS; the next ``getfd``/``add-fd`` names it."""
        try:
            self._client.send_fd_scm(fd)
        except (_QMPError, OSError) as err:
            raise HypervisorError(f"cannot pass fd {fd} over QMP socket {self._path}") from err

    async def events(self) -> AsyncIterator[QmpEvent]:
        """Every event QEMU sends, in order; ends when the connection closes."""
        closed = asyncio.ensure_future(self._closed())
        get: asyncio.Future[Any] | None = None
        try:
            while True:
                get = asyncio.ensure_future(self._listener.get())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    while not self._listener.empty():
                        yield self._convert(await self._listener.get())
                    return
                yield self._convert(get.result())
        finally:
            closed.cancel()
            if get is not None:
                get.cancel()

    async def _closed(self) -> None:
        """Resolve once the client is no longer connected (QEMU hung up or we closed)."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    @staticmethod
    def _convert(msg: Any) -> QmpEvent:
        stamp = msg.get("timestamp") or {}
        seconds = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
        event = QmpEvent(str(msg.get("event", "")), seconds, dict(msg.get("data") or {}))
        log.debug("<-- event %s", event.name, extra={"qmp_data": dict(event.data)})
        return event

    async def close(self) -> None:
        """Disconnect; errors from a connection QEMU already closed are ignored."""
        try:
            await self._client.disconnect()
        except (EOFError, OSError, _QMPError) as err:
            log.debug("QMP disconnect: %s", err)

"""The local HTTP status endpoint: ``/healthz /readyz /status /metrics /`` on loopback.

Started by the composition root as one task of its TaskGroup (``StatusServer.run``),
and by tests and the benchmark directly (``async with StatusServer(...)``). Serves
through :mod:`launcher.status.http` (asyncio streams; why not aiohttp is measured
there). It listens on 127.0.0.1 by default, or
on another loopback address or a unix socket; it refuses any other address, so it is
never reachable on the pod IP (and masquerade never DNATs its port). Only GET and HEAD
are served; other methods get 405 and unknown paths 404. A failure to bind raises
:class:`~launcher.errors.StatusServerError` (exit 6).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import time
from importlib import resources
from types import TracebackType

from launcher.errors import StatusServerError
from launcher.liveness import Liveness
from launcher.network.linkstats import LinkReader

from .collect import Collector
from .conncap import connection_limit
from .http import Handler, HttpServer, Response
from .listen import DEFAULT_LISTEN, Listen, bind, parse_listen
from .metrics import CONTENT_TYPE, Metrics
from .model import StatusSnapshot, StatusSource
from .render import status_json

__all__ = ["StatusServer", "Listen", "parse_listen", "DEFAULT_LISTEN", "LAG_LIMIT_S"]

log = logging.getLogger(__name__)

LAG_LIMIT_S = 1.0  # /healthz fails when the event loop lagged more than this…
LAG_WINDOW_S = 5.0  # …in any probe of the last LAG_WINDOW_S seconds
LAG_PROBE_S = 0.1  # a probe: how late a timer this long fires (measured when asked)


def _page() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


def _openapi() -> bytes:
    return resources.files(__package__).joinpath("openapi.yaml").read_bytes()


class StatusServer:
    """Serves a :class:`StatusSource`; ``run()`` for a TaskGroup, or ``async with``."""

    def __init__(
        self,
        source: StatusSource,
        listen: Listen | str = DEFAULT_LISTEN,
        *,
        netns: str | None = None,
        ttl: float = 0.5,
        sock: socket.socket | None = None,
    ) -> None:
        self.listen = parse_listen(listen) if isinstance(listen, str) else listen
        self._sock = sock  # already bound by the caller (launcher.status.task), or None
        self.collector = Collector(source, netlink=LinkReader(netns), ttl=ttl)
        self.metrics = Metrics()
        self.liveness = Liveness(lambda: source.hypervisor)  # checked on request, no timer
        self._http: HttpServer | None = None
        self._lags: collections.deque[tuple[float, float]] = collections.deque()
        self._page = _page()
        self._openapi = _openapi()
        self.port: int | None = None
        self._status_body: tuple[StatusSnapshot | None, bytes] = (None, b"")
        self._metrics_body: tuple[StatusSnapshot | None, bytes] = (None, b"")

    # ---- lifecycle ---------------------------------------------------------------------

    def routes(self) -> dict[str, Handler]:
        """Path → handler (GET and HEAD; other methods get 405, other paths 404)."""
        return {
            "/": self._index,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/status": self._status,
            "/metrics": self._metrics,
            "/openapi.yaml": self._openapi_doc,
        }

    async def start(self) -> None:
        """Bind and start serving; StatusServerError if the address cannot be used."""
        if self._http is not None:
            return
        http = HttpServer(self.routes(), limit=connection_limit())  # .conncap
        handed = self._sock is not None  # bound by the run's status task (socket activation)
        try:
            sock = self._sock if self._sock is not None else bind(self.listen)
            await http.start(sock)
        except OSError as err:
            await http.close()
            raise StatusServerError(
                f"cannot serve the status endpoint on {self.listen}: {err.strerror or err}"
            ) from err
        self._sock = sock
        if self.listen.path is None:
            self.port = int(sock.getsockname()[1])
        self._http = http
        where = self.listen if self.listen.path else f"{self.listen.host}:{self.port}"
        if handed:  # the task logged status-listening when it bound the socket
            log.info(
                "status endpoint serving (HTTP stack loaded on the first connection)",
                extra={"event": "status-activated", "listen": str(where)},
            )
        else:
            log.info(
                "status endpoint listening",
                extra={"event": "status-listening", "listen": str(where)},
            )

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.collector.close()
        await self.liveness.close()
        await asyncio.to_thread(self.collector.netlink.close)

    async def run(self) -> None:
        """Serve until cancelled (a named task in the composition root's TaskGroup)."""
        await self.start()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self.close()

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``http://host:port`` for TCP (unix sockets: ``http://localhost``)."""
        if self.listen.path is not None:
            return "http://localhost"
        host = self.listen.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def probe_lag(self) -> float:
        """How late the event loop runs a timer now; the worst of the last LAG_WINDOW_S.

        Measured when ``/healthz`` asks, never on a timer of its own (issue 17: an idle
        launcher is not woken to sample its own loop). A probe sleeps LAG_PROBE_S and
        takes the oversleep; a stall seen by a probe stays reported for LAG_WINDOW_S.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        now = loop.time()
        self._lags.append((now, max(0.0, now - start - LAG_PROBE_S)))
        while self._lags and self._lags[0][0] < now - LAG_WINDOW_S:
            self._lags.popleft()
        self.collector.loop_lag_s = max(lag for _, lag in self._lags)
        return self.collector.loop_lag_s

    # ---- handlers ----------------------------------------------------------------------

    async def _index(self) -> Response:
        return Response(200, self._page, "text/html; charset=utf-8", _NO_STORE)

    async def _openapi_doc(self) -> Response:
        return Response(200, self._openapi, "application/yaml")

    async def _healthz(self) -> Response:
        lag = await self.probe_lag()
        ok = lag <= LAG_LIMIT_S
        body: dict[str, object] = {
            "status": "ok" if ok else "lagging",
            "loopLagSeconds": round(lag, 6),
        }
        if not ok:
            body["reason"] = f"event loop lagged {lag:.3f} s (limit {LAG_LIMIT_S} s)"
        vmm = await self.liveness.check(wait_s=0)  # never waits for a ping
        if ok and not self.liveness.healthy(vmm):
            ok = False
            took = vmm.unresponsive_for(time.monotonic())
            body["status"] = "vmm-unresponsive"
            body["reason"] = (
                f"{vmm.reason} (for {took:.0f} s; limit {self.liveness.unhealthy_after_s:g} s)"
            )
        return _json(body, 200 if ok else 503)

    async def _readyz(self) -> Response:
        snap = await self.collector.snapshot()
        vmm = await self.liveness.check()  # at most the 2 s ping
        ready = snap.ready and vmm.responsive
        body: dict[str, object] = {
            "ready": ready,
            "phase": snap.phase,
            "conditions": {c.type: c.status for c in snap.conditions},
        }
        if not snap.ready:
            body["reason"] = snap.not_ready_reason
        elif not ready:
            body["reason"] = f"HypervisorRunning: Unresponsive: {vmm.reason}"
        return _json(body, 200 if ready else 503)

    async def _status(self) -> Response:
        snap = await self.collector.snapshot()
        if self._status_body[0] is not snap:  # encode once per snapshot, not per request
            body = json.dumps(status_json(snap), separators=(",", ":")).encode()
            self._status_body = (snap, body)
        return Response(200, self._status_body[1], "application/json", _NO_STORE)

    async def _metrics(self) -> Response:
        snap = await self.collector.snapshot()
        if self._metrics_body[0] is not snap:
            self._metrics_body = (snap, self.metrics.render(snap))
        return Response(200, self._metrics_body[1], CONTENT_TYPE)


_NO_STORE = (("Cache-Control", "no-store"),)


def _json(body: object, status: int) -> Response:
    text = json.dumps(body, separators=(",", ":")).encode()
    return Response(status, text, "application/json; charset=utf-8", _NO_STORE)

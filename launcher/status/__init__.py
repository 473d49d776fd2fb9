"""The launcher's local status endpoint: ``/healthz /readyz /status /metrics /``.

The composition root keeps a :class:`StatusBoard` (the :class:`StatusSource` the server
reads), updates it as the run progresses and runs :class:`StatusServer` as a task of its
TaskGroup; ``virt-launcher status`` prints what a running launcher serves. See
docs/status.md.

Every name is imported from its module on first use, not with this package: the HTTP
side (:class:`StatusServer`: its HTTP server, prometheus-client, /proc reads) and the board (which
knows the DHCP servers) stay out of a process that only needs a listen address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.startup import lazy_exports

if TYPE_CHECKING:
    from .listen import DEFAULT_LISTEN, Listen, parse_listen
    from .model import Event, StatusBoard, StatusSnapshot, StatusSource
    from .server import StatusServer

__all__ = [
    "StatusServer",
    "StatusBoard",
    "StatusSource",
    "StatusSnapshot",
    "Event",
    "DEFAULT_LISTEN",
    "Listen",
    "parse_listen",
]


__getattr__ = lazy_exports(
    __name__,
    {
        "StatusServer": ".server",
        "StatusBoard": ".model",
        "StatusSource": ".model",
        "StatusSnapshot": ".model",
        "Event": ".model",
        "DEFAULT_LISTEN": ".listen",
        "Listen": ".listen",
        "parse_listen": ".listen",
    },
)

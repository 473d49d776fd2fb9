"""The launcher's local status endpoint: ``/healthz /readyz /status /metrics /``.

The composition root keeps a :class:`StatusBoard` (the :class:`StatusSource` the server
reads), updates it as the run progresses and runs :class:`StatusServer` as a task of its
TaskGroup; ``virt-launcher status`` prints what a running launcher serves. See
docs/status.md.
"""

from __future__ import annotations

from .model import Event, StatusBoard, StatusSnapshot, StatusSource
from .server import DEFAULT_LISTEN, Listen, StatusServer, parse_listen

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

"""Logging output, configured in exactly one place.

The CLI calls :func:`configure` once; every other module uses
``logging.getLogger(__name__)`` and passes structured fields through ``extra``
(``vm``, ``iface``, ``event``, and any other JSON-serialisable value). Output is one
JSON object per line on stderr, so kubelet's log files stay machine-readable.
Protocol traffic is logged at DEBUG with ``-->``/``<--`` prefixes by the adapters.
Warnings and errors are rate-limited per condition (:class:`RateLimit`), so resource
exhaustion cannot flood the pod's log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

__all__ = ["JsonFormatter", "RateLimit", "configure", "set_context"]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, then extra fields."""

    context: ClassVar[dict[str, Any]] = {}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(self.context)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.levelno <= logging.DEBUG:
            out["traceback"] = self.formatException(record.exc_info)
        elif record.exc_info and record.exc_info[1] is not None:
            out["error"] = str(record.exc_info[1])
        return json.dumps(out, default=str, separators=(",", ":"))


class RateLimit(logging.Filter):
    """At most ``burst`` WARNING-or-worse lines per condition per ``interval_s``.

    A condition is one logger, level and message template (``record.msg``, before its
    arguments are filled in), so a flood of the same failure (EMFILE on every accept, a
    peer sending garbage) costs a few lines per interval, not thousands per second. The
    lines held back are counted; the next line of that condition carries the count as
    ``"repeated"`` (how many like it were not written since the last one). INFO and DEBUG
    pass untouched; at most ``max_conditions`` conditions are remembered.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        burst: int = 5,
        *,
        max_conditions: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.burst = burst
        self.max_conditions = max_conditions
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # [start, count, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self._clock()
        window = self._seen.get(key)
        if window is None or now - window[0] >= self.interval_s:
            held = int(window[2]) if window is not None else 0
            if window is None and len(self._seen) >= self.max_conditions:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = [now, 1, 0]
            if held:
                record.repeated = held
            return True
        window[1] += 1
        if window[1] <= self.burst:
            return True
        window[2] += 1
        return False


def set_context(**fields: Any) -> None:
    """Add fields (e.g. ``vm="ns/name"``) to every following log line."""
    JsonFormatter.context.update(fields)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record as JSON lines to ``stream`` (stderr) at ``level``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries stay quiet unless the user asked for DEBUG.
    for noisy in ("pyroute2", "asyncio", "aiohttp.access", "qemu"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))

"""Logging output, configured in exactly one place.

The CLI calls :func:`configure` once; every other module uses
``logging.getLogger(__name__)`` and passes structured fields through ``extra``
(``vm``, ``iface``, ``event``, and any other JSON-serialisable value). Output is one
JSON object per line on stderr, so kubelet's log files stay machine-readable.
Protocol traffic is logged at DEBUG with ``-->``/``<--`` prefixes by the adapters.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, ClassVar, TextIO

__all__ = ["JsonFormatter", "configure", "set_context"]

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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries stay quiet unless the user asked for DEBUG.
    for noisy in ("pyroute2", "asyncio", "aiohttp.access", "qemu"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))

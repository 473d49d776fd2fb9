"""Parses the test guest's serial-console line protocol (``VL-*`` lines, docs/guest.md).

``ConsoleReader`` drains a QEMU (or cloud-hypervisor) serial stream on a thread, keeps
every line, and lets e2e tests and benchmarks wait, with a timeout, for the next
``VlLine`` of a kind (``LEASE4``, ``LEASE6``, ``READY``, ``POWER-BUTTON`` ...).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

__all__ = ["VlLine", "parse_line", "ConsoleReader", "ConsoleTimeout"]

# SeaBIOS and the kernel may leave escape sequences or text before a VL- token.
_VL = re.compile(r"VL-([A-Z0-9]+(?:-[A-Z0-9]+)*)(?:\s+(.*))?$")


class ConsoleTimeout(AssertionError):
    """The guest did not print the awaited line in time (an assertion failure in tests)."""


@dataclass(frozen=True, slots=True)
class VlLine:
    """One protocol line: ``VL-LEASE4 eth0 10.0.0.5/24 router=10.0.0.1`` gives
    kind ``LEASE4``, args ``("eth0", "10.0.0.5/24")``, fields ``{"router": "10.0.0.1"}``."""

    kind: str
    args: tuple[str, ...]
    fields: Mapping[str, str]
    raw: str
    host_time: float = field(default=0.0, compare=False)

    def list_field(self, name: str) -> tuple[str, ...]:
        """A comma-separated field as a tuple (empty when missing or empty)."""
        value = self.fields.get(name, "")
        return tuple(v for v in value.split(",") if v)


def parse_line(text: str, host_time: float = 0.0) -> VlLine | None:
    """The ``VlLine`` in one console line, or None if it carries none."""
    match = _VL.search(text.rstrip("\r\n"))
    if match is None:
        return None
    args: list[str] = []
    fields: dict[str, str] = {}
    for token in (match.group(2) or "").split():
        key, sep, value = token.partition("=")
        if sep and key and not fields.get(key):
            fields[key] = value
        elif not sep:
            args.append(token)
    return VlLine(match.group(1), tuple(args), fields, match.group(0), host_time)


class ConsoleReader:
    """Collects lines from a binary stream on a daemon thread; wait_for() is bounded."""

    def __init__(self, stream: IO[bytes], *, log_path: str | None = None) -> None:
        self._stream = stream
        self._lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._log = open(log_path, "w", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._thread = threading.Thread(target=self._pump, name="guest-console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if self._log is not None:
                    self._log.write(text + "\n")
                    self._log.flush()
                with self._cond:
                    self._lines.append((time.monotonic(), text))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._log is not None:
                self._log.close()

    @property
    def closed(self) -> bool:
        """True once the stream reached EOF (the VMM exited)."""
        with self._cond:
            return self._closed

    def text(self) -> str:
        """Everything read so far, one line per line."""
        with self._cond:
            return "\n".join(t for _, t in self._lines)

    def lines(self) -> list[tuple[float, str]]:
        """Every line read so far with the time.monotonic() it arrived at."""
        with self._cond:
            return list(self._lines)

    def vl_lines(self, kind: str | None = None) -> list[VlLine]:
        """Every protocol line read so far (of one kind if given), in order."""
        with self._cond:
            snapshot = list(self._lines)
        parsed = (parse_line(text, ts) for ts, text in snapshot)
        return [p for p in parsed if p is not None and (kind is None or p.kind == kind)]

    def first_line_time(self) -> float:
        """time.monotonic() when the first line arrived (0.0 if none yet)."""
        with self._cond:
            return self._lines[0][0] if self._lines else 0.0

    def mark(self) -> int:
        """Position to pass as ``since`` so wait_for() only looks at later lines."""
        with self._cond:
            return len(self._lines)

    def wait_for(
        self,
        kind: str,
        timeout: float,
        *,
        since: int = 0,
        where: Callable[[VlLine], bool] | None = None,
    ) -> VlLine:
        """The first ``VL-<kind>`` line at or after ``since`` that matches ``where``."""
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self._lines):
                    ts, text = self._lines[index]
                    index += 1
                    line = parse_line(text, ts)
                    if line is not None and line.kind == kind and (where is None or where(line)):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    state = "console closed" if self._closed else f"{timeout:.0f} s passed"
                    tail = "\n".join(t for _, t in self._lines[-25:])
                    raise ConsoleTimeout(f"no VL-{kind} line ({state}); console tail:\n{tail}")
                self._cond.wait(min(remaining, 0.5))

    def wait_closed(self, timeout: float) -> bool:
        """Wait (bounded) for EOF; True if the stream closed."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

"""Where the status endpoint listens, and binding that socket without the HTTP stack.

Used by the status server, the ``virt-launcher status`` client and the composition
root's status task, which binds the socket at start-up with :func:`bind` and imports the
HTTP side (its HTTP server, prometheus-client, the netlink reader) only when the first
connection arrives (see :mod:`launcher.status.task`). This module imports nothing
heavy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import StatusServerError, UsageError

__all__ = ["DEFAULT_LISTEN", "Listen", "parse_listen", "bind"]

#: The status endpoint's port. Defined here, and imported by the network plan's model
#: (masquerade never DNATs it), so ``status --check``, an exec probe run every few
#: seconds, does not import the network package (≈7 MiB, ≈40 ms).
DEFAULT_STATUS_PORT = 8186
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_STATUS_PORT}"


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the endpoint listens: a loopback ``host:port`` or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``127.0.0.1:8186``, ``[::1]:8186``, ``:8186``, ``unix:/run/s.sock`` or ``/run/s.sock``.

    Raises UsageError for a malformed value or a non-loopback host.
    """
    if text.startswith(("unix:", "/", "./")):
        path = text.removeprefix("unix:")
        if not path:
            raise UsageError(f"--status-listen {text!r} names no unix socket path")
        return Listen(path=Path(path))
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--status-listen {text!r} is not HOST:PORT or a unix socket path")
    host = host.strip("[]") or "127.0.0.1"
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError as err:
            raise UsageError(f"--status-listen host {host!r} is not an IP address") from err
        if not loopback:
            raise UsageError(
                f"--status-listen host {host!r} is not a loopback address "
                "(the status endpoint is never served on the pod IP)"
            )
    return Listen(host=host, port=int(port_text))


def bind(listen: Listen) -> socket.socket:
    """A listening, non-blocking socket for ``listen`` (a stale unix socket file is
    replaced); StatusServerError when the address cannot be used."""
    try:
        if listen.path is not None:
            with contextlib.suppress(FileNotFoundError):
                if listen.path.is_socket():
                    listen.path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(listen.path))
            except OSError:
                sock.close()
                raise
        else:
            host = listen.host or "127.0.0.1"
            infos = socket.getaddrinfo(
                host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        raise StatusServerError(
            f"cannot serve the status endpoint on {listen}: {err.strerror or err}"
        ) from err
    return sock

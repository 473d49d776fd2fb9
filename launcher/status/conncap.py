"""A cap on the status endpoint's open connections, below the process's fd limit.

Used by :class:`launcher.status.server.StatusServer`, which gives :func:`connection_limit`
to its :class:`~launcher.status.http.HttpServer` (which enforces it). Without a cap,
clients that open connections and hold them (20,000 of them, in issue 16) use up the
launcher's file descriptors: every accept then fails with EMFILE, ``/healthz`` cannot be
reached, and anything else that needs an fd (the VMM's hot plug, the netlink helper)
fails too.

With it, the endpoint never holds more than :func:`connection_limit` connections: when a
new one is accepted at the cap, the oldest open ones are closed (the longest-held are the
likeliest to be idle; a probe's connection lives milliseconds), so a fresh request —
kubelet's probe — is always served. Each time the cap is hit a warning is logged (the
JSON log rate-limits repeats, :mod:`launcher.logs`).
"""

from __future__ import annotations

import resource

__all__ = ["connection_limit", "MAX_CONNECTIONS", "FD_RESERVE"]

#: The most connections the endpoint holds, however high the fd limit.
MAX_CONNECTIONS = 1024
#: File descriptors kept for the rest of the launcher (taps, DHCP sockets, the VMM's
#: pipes, helpers: 128) and for the connections accepted before the oldest are closed
#: (asyncio accepts up to the backlog, 128, per wake-up, makes each connection's protocol
#: in a later task, and a closed transport frees its fd one loop turn later: 3 bursts).
FD_RESERVE = 512


def connection_limit(nofile: int | None = None) -> int:
    """The cap for a soft ``RLIMIT_NOFILE`` of ``nofile`` (default: this process's)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if nofile is None else nofile
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - FD_RESERVE, soft // 2))

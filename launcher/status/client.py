"""``virt-launcher status``: fetch ``/status`` from a running launcher and print it.

Called by ``launcher.cli``. Connects over TCP (loopback) or the unix socket the launcher
listens on, with a bounded timeout. ``--json`` prints the document as served; otherwise
a terminal view: phase, conditions, processes, a table of interfaces and the last events.

``--check live|ready`` (:func:`check`) is the pod's exec probe: kubelet cannot reach the
loopback-only endpoint with an httpGet probe, so it runs this every few seconds inside
the container. It uses the standard library's sockets only (aiohttp is imported by
:func:`fetch_status` alone): one HTTP/1.0 GET of ``/healthz`` or ``/readyz``, bounded.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from launcher.errors import EXIT_OK, EXIT_STATUS_SERVER, StatusServerError

from .listen import Listen, parse_listen

if TYPE_CHECKING:
    import aiohttp

__all__ = ["fetch_status", "format_status", "show", "check", "EXIT_NOT_OK"]

TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 3.0
#: ``--check``: the endpoint answered 503 (not live / not ready).
EXIT_NOT_OK = 7
_CHECK_PATHS = {"live": "/healthz", "ready": "/readyz"}


async def fetch_status(listen: Listen | str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """The ``/status`` document of the launcher listening at ``listen``."""
    from launcher.startup import without_ssl  # noqa: PLC0415 - startup: CLI light

    with without_ssl():  # plain HTTP on loopback or a unix socket (see launcher.startup)
        import aiohttp  # noqa: PLC0415 - startup: CLI light (not for --check, every few s)

    where = parse_listen(listen) if isinstance(listen, str) else listen
    if where.path is not None:
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(where.path))
        url = "http://localhost/status"
    else:
        connector = aiohttp.TCPConnector()
        host = f"[{where.host}]" if where.host and ":" in where.host else where.host
        url = f"http://{host}:{where.port}/status"
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise StatusServerError(f"{url} answered HTTP {resp.status}")
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        raise StatusServerError(
            f"cannot read the status endpoint at {where}: {err or type(err).__name__}"
        ) from err
    if not isinstance(body, dict):
        raise StatusServerError(f"the status endpoint at {where} sent a non-object document")
    return body


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _diagnosis(interfaces: list[dict[str, Any]]) -> list[str]:
    """The DIAGNOSIS section: one verdict per NIC, its reason, then each finding."""
    out = ["", "DIAGNOSIS"]
    shown = False
    for i in interfaces:
        g = i.get("diagnosis")
        if not g:
            continue
        shown = True
        out.append(f"{i['name']}: {g['verdict']} - {g['reason']}")
        for f in g["findings"]:
            out.append(f"  {f['severity']:<7} {f['code']}: {f['message']}")
            if f["fix"]:
                out.append(f"          next: {f['fix']}")
        for p in g["probes"]:
            seen = "n/a" if p["answered"] is None else ("answers" if p["answered"] else "silent")
            who = f" from {p['mac']}" if p.get("mac") else ""
            out.append(
                f"  probe   {p['target']} on {p['interface']}: {seen}{who} {p['detail']}".rstrip()
            )
    if not shown:
        out.append("(no NIC diagnosed yet: the network is not applied)")
    return out


def format_status(doc: dict[str, Any], events: int = 10) -> str:
    """A terminal rendering of a ``/status`` document."""
    lines = [
        f"VM {doc.get('vm') or '(no spec yet)'}: {doc['phase']}, "
        + ("ready" if doc["ready"] else f"not ready ({doc.get('notReadyReason')})")
    ]
    lines.append("")
    lines += _table(
        [["CONDITION", "STATUS", "REASON", "SINCE"]]
        + [
            [c["type"], c["status"], c["reason"], c["lastTransitionTime"]]
            for c in doc["conditions"]
        ]
    )
    la, hv = doc["launcher"], doc.get("hypervisor")
    lines.append("")
    lines.append(
        f"launcher  pid {la['pid']}  up {_secs(la['uptimeSeconds'])}  RSS {_bytes(la['rssBytes'])}"
        f"  CPU {_secs(la['cpuSeconds'])}  ready after {_secs(la['timeToReadySeconds'])}"
    )
    if hv:
        lines.append(
            f"{hv['kind']}  pid {hv['pid']}  {hv['state']}  up {_secs(hv['uptimeSeconds'])}"
            f"  RSS {_bytes(hv['rssBytes'])}  CPU {_secs(hv['cpuSeconds'])}"
        )
    else:
        lines.append("hypervisor  not started")
    lines.append("")
    rows = [
        ["INTERFACE", "BINDING", "MAC", "IP", "LINK", "POD-IF", "TAP", "DHCP O/A/N/D/R", "RX", "TX"]
    ]
    for i in doc["interfaces"]:
        d, t = i["dhcp"], i.get("traffic") or {}
        rows.append(
            [
                i["name"],
                i["binding"],
                i.get("mac") or "-",
                ",".join(i["ipAddresses"]) or "-",
                i["linkState"],
                i.get("podInterface") or "-",
                i.get("tap") or "-",
                "/".join(str(d[k]) for k in ("offers", "acks", "naks", "declines", "releases")),
                _bytes(t.get("rxBytes")),
                _bytes(t.get("txBytes")),
            ]
        )
    lines += _table(rows)
    digest = (doc.get("nftables") or {}).get("digest")
    if digest:
        lines.append(f"nftables {digest}")
    lines += _diagnosis(doc["interfaces"])
    lines.append("")
    lines.append(f"LAST {events} EVENTS")
    for e in doc["events"][-events:]:
        detail = " ".join(str(e[k]) for k in ("iface", "address", "mac", "message") if e.get(k))
        lines.append(f"{e['time']}  {e['source']:<10} {e['kind']:<22} {detail}".rstrip())
    return "\n".join(lines) + "\n"


def show(listen: str, out: TextIO, *, as_json: bool = False) -> int:
    """``virt-launcher status``: print the status of the launcher at ``listen``; exit code."""
    import asyncio  # noqa: PLC0415 - startup: CLI light (--check needs no event loop)

    doc = asyncio.run(fetch_status(listen))
    if as_json:
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        out.write(format_status(doc))
    return 0


def _get(where: Listen, path: str, timeout_s: float) -> tuple[int, bytes]:
    """(HTTP status, body) of one ``GET path`` (HTTP/1.0: the server closes after it)."""
    deadline = time.monotonic() + timeout_s
    if where.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = str(where.path)
    else:
        host = where.host or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        address = (host, where.port)
    with sock:
        sock.settimeout(timeout_s)
        sock.connect(address)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while len(data) < 65536:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise StatusServerError(f"{where} answered something that is not HTTP: {head[:60]!r}")
    return int(parts[1]), body


def check(listen: str, which: str, out: TextIO, timeout_s: float = CHECK_TIMEOUT_S) -> int:
    """``virt-launcher status --check live|ready``: GET ``/healthz`` or ``/readyz``.

    Exit 0 when it answers 200; :data:`EXIT_NOT_OK` (7) when it answers 503 (the reason
    on stdout, which kubelet shows in the probe's event); 6 when the endpoint cannot be
    reached within ``timeout_s`` or answers anything else (stderr).
    """
    path = _CHECK_PATHS[which]
    where = parse_listen(listen)
    try:
        code, body = _get(where, path, timeout_s)
    except (OSError, StatusServerError) as err:
        print(f"cannot read {path} at {where}: {err}", file=sys.stderr)
        return EXIT_STATUS_SERVER
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    reason = doc.get("reason") if isinstance(doc, dict) else None
    if code == 200:
        print(f"{which}: ok", file=out)
        return EXIT_OK
    if code == 503:
        print(f"not {which}: {reason or 'no reason given'}", file=out)
        return EXIT_NOT_OK
    print(f"{path} at {where} answered HTTP {code}", file=sys.stderr)
    return EXIT_STATUS_SERVER

"""Keep aiohttp and asyncio from loading TLS: the launcher never speaks TLS.

Called by the status endpoint, the ``status`` command's client and the cloud-hypervisor
client around ``import aiohttp`` (:func:`without_ssl`), and by ``virt-launcher run``
before anything else imports asyncio (:func:`import_asyncio`).
aiohttp treats a missing ``ssl`` module as "no TLS support" (``try: import ssl / except
ImportError``), which is exactly this process: the status endpoint is plain HTTP on
loopback or a unix socket and cloud-hypervisor's API is a unix socket. Without this,
``import aiohttp`` builds two default TLS contexts at import time, parsing the whole
system CA bundle (≈100 ms and several MiB of RSS on Debian 12) for connections that
never happen.

The block is scoped: ``ssl`` is hidden only while the ``with`` body imports and put back
afterwards, so the modules imported inside keep "no TLS" for good while libraries that
import ``ssl`` unconditionally (qemu.qmp, pyroute2, prometheus-client) still get it; they
only map the shared libraries, they build no context.
Written by hand because it is three lines of ``sys.modules`` bookkeeping no library offers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["without_ssl", "import_asyncio"]

_SSL_AWARE_STDLIB = ("http.client", "urllib.request")


@contextmanager
def _ssl_hidden() -> Iterator[None]:
    real = sys.modules.get("ssl")
    sys.modules["ssl"] = None  # type: ignore[assignment]  # the documented "not importable" marker
    try:
        yield
    finally:
        if real is not None:
            sys.modules["ssl"] = real
        elif sys.modules.get("ssl", 0) is None:
            del sys.modules["ssl"]


@contextmanager
def without_ssl() -> Iterator[None]:
    """Modules first imported inside the block see no ``ssl`` module (ImportError).

    The standard library modules that define TLS names only when ``ssl`` imports
    (``http.client``'s HTTPSConnection, ``urllib.request``'s HTTPSHandler) are imported
    first, with ``ssl``, so a later user of them (prometheus-client) finds those names.
    """
    for stdlib in _SSL_AWARE_STDLIB:
        importlib.import_module(stdlib)
    with _ssl_hidden():
        yield


def import_asyncio() -> None:
    """Import asyncio with ``ssl`` hidden (the launcher's event loop never does TLS).

    Called by ``virt-launcher run`` first thing: asyncio would otherwise load ``ssl``
    (libssl and libcrypto, ≈12 ms) on the way to the VMM spawn; qemu.qmp imports it later,
    in a thread, off that path. Does nothing when asyncio is already imported.
    """
    if "asyncio" not in sys.modules:
        with _ssl_hidden():
            importlib.import_module("asyncio")

"""Every start-up-time measure of ``virt-launcher run`` in one place, each with what it buys.

``virt-launcher run`` is on the pod's start-up path (exec → VMM spawned with the network
applied) and a node hosts hundreds of launchers, so what the process imports, and when,
is measured. The measures below are the only places the launcher bends "import at the
top of the module"; everything else imports normally. Gains were measured on the
project's 2-core Debian 12 VM with ``bench/launcher.py`` (spawn time, RSS), ``python -X
importtime`` and ``/proc/self/smaps_rollup`` (bench/README.md, *Launcher* and *Idle*):

============================  ============================  ===================================
measure                       where                         measured gain
============================  ============================  ===================================
fork the netlink child first  :func:`fork_children`         the child's imports (pyroute2, the
(:mod:`launcher.netchild`:    (``launcher.entry``)          network package) run on the second
no asyncio), before the                                     core beside the parent's, from
helper and the CLI                                          ≈40 ms after exec (≈76 ms when it
                                                            was forked after the helper and
                                                            asyncio); with the rows below,
                                                            spawn 937 → ≈300 → 201–231 ms
                                                            median (bench/README.md)
dataclass code compiled at    ``launcher.dataclass_code``   the code ``@dataclass`` generates
install                       (``launcher.entry``, the      for ≈150 models was 45 % of the
                              netlink child)                start-up imports: launcher
                                                            117 → 68 ms, netlink child
                                                            −30 ms (uncontended)
cyclic GC paused during       :func:`pause_gc`,             ≈−5 ms of start-up imports (min of
start-up                      :func:`start_up_done`         12 runs, 106.7 → 101.5 ms); the
                                                            52,000 start-up objects are frozen
                                                            afterwards (no later collection
                                                            walks them)
fork the privileged helper    :func:`fork_children`         the helper (docs/privileges.md)
before asyncio is imported                                  carries little: 14.4 MiB RSS /
                                                            7.1 MiB private instead of
                                                            17.4 / 9.4 forked after asyncio
the helper's imports on use   ``launcher.privsep.helper``,  each request imports what it
                              ``launcher.privsep.codec``    needs: the idle helper and the
                                                            fork skip asyncio (≈14 ms,
                                                            5.8 MiB; ``launcher.netchild``
                                                            has none), ``launcher.network``
                                                            (≈64 ms, 10.6 MiB), subprocess and
                                                            argparse (≈3 ms, 0.7 MiB); the tap
                                                            and socket openers stay off the
                                                            spawn path as in ``launcher.nics``
asyncio without ``ssl``       :func:`import_asyncio`        −12 ms (libssl, libcrypto)
aiohttp without ``ssl``       :func:`without_ssl`           ≈−100 ms and several MiB at the
                                                            first status request (no CA
                                                            bundle parsed for TLS contexts)
lean pyroute2 (submodules     :func:`lean_pyroute2`         ≈−100 ms and ≈−6 MiB in the
only)                                                       netlink child (the status reader
                                                            needs none: ``linkstats``)
lazy package exports          :func:`lazy_exports`          the netlink child unpickles plans
                              (``launcher.spec``,           without the spec validator
                              ``launcher.status``;          (PyYAML, the readers: ≈11 ms);
                              ``dhcp`` has its own)         a package imported for its types
                                                            costs nothing more
hypervisor adapter in a       :func:`preload_hypervisor`    ≈9 ms of imports (QEMU) run while
thread                        (``launcher.run``)            the child applies the network
DHCP/RA servers after the     :func:`import_servers`        ≈7 ms of imports after the spawn;
spawn                         (``launcher.run``,            servers listen 18-57 ms after it
                              ``launcher.nics``)
status HTTP stack on the      ``launcher.status.task``      −17 MiB, −300 ms for a VM nobody
first connection                                            debugs (the socket is bound at
                                                            once)
hot plug, cloud-init after    ``launcher.run``              ≈6 ms (hot plug), ≈3.5 ms
the spawn                                                   (cloud-init) off the spawn path;
                                                            pycdlib only to build a seed ISO
the CLI's other commands      ``launcher.cli`` (the spec    ``status --check`` (the exec probe,
light                         loader, the run stack, the    every few seconds) loads no spec
                              status client, ``plandoc``    stack; ``validate`` does not
                              when used)                    import ``launcher.run`` (≈65 ms)
============================  ============================  ===================================

One measure was tried and dropped because it bought nothing measurable: importing the
DHCP codecs at start-up instead of after the spawn. (Pausing the GC was dropped once on a
noisy spawn median, 306 vs 289 ms over 7 runs, and taken up again when the minimum of 12
import timings showed its ≈5 ms.) Three more start-up measures live where their work is:
the netlink child creates taps by ``TUNSETIFF`` instead of pyroute2's forked helper process
(:meth:`launcher.network.netlink.Netlink.add_tap`, ≈−12 to −26 ms of apply), hands the
GIL over every 0.5 ms so apply's ruleset thread is not kept waiting
(:mod:`launcher.netchild`; ``nft`` finished 7–30 ms after the last netlink change, then
with it), and loads the ruleset through libnftables in-process, its context closed after
the links are made (:mod:`launcher.network.nftables`; first apply −5 to −14 ms, no-op
re-apply −20 to −26 ms, bench/README.md *Start-up and memory, third stop*).

A deferred import elsewhere in the launcher names its row here in its ``noqa`` comment
(``# noqa: PLC0415 - startup: <row>``) or the import cycle it breaks; any other local
import is one to remove. (The netlink child's own, in :mod:`launcher.netchild`, follow the
fork: they run in the child after :func:`lean_pyroute2`.)
This module imports only the standard library at its top, so it costs nothing to import
first.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.netchild import Started
    from launcher.privsep.helper import Helper

__all__ = [
    "fork_children",
    "import_asyncio",
    "without_ssl",
    "lean_pyroute2",
    "lazy_exports",
    "preload_hypervisor",
    "import_servers",
    "SERVER_MODULES",
    "pause_gc",
    "start_up_done",
]

#: The DHCPv4, DHCPv6 and RA servers' modules: imported after the VMM spawn.
SERVER_MODULES = ("dhcp.v4.server", "dhcp.v6.server", "dhcp.ra")

_SSL_AWARE_STDLIB = ("http.client", "urllib.request")
_GLOBAL_WITH_VALUE = ("--spec", "--log-level")  # the options before the command


# --------------------------------------------------------------------------- the fork


def _peek_log_level(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--log-level" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--log-level="):
            return arg.partition("=")[2]
    return "info"


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand: the first word that is neither a global option nor its value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def fork_children(argv: Sequence[str]) -> tuple[Started | None, Helper | None]:
    """For ``run``: (the netlink child, the privileged helper) forked now, before the CLI
    is imported; else (None, None).

    Called by :mod:`launcher.entry` first thing, while the process has one thread and no
    event loop: the netlink child first — its imports (pyroute2, the network package)
    are the longest way to the VMM spawn, so they start on the second core after only
    the standard library, :mod:`launcher.signals` and :mod:`launcher.errors` are
    imported here — then the helper, before asyncio is imported (it carries little).
    The log level is peeked from ``argv`` for the children's own log lines (the CLI
    parses the arguments for real and reports any mistake). A fork that fails gives
    None: the CLI forks again and reports the failure properly.
    """
    if command_of(argv) != "run" or "-h" in argv or "--help" in argv:
        return None, None
    from launcher import signals  # noqa: PLC0415 - startup: the fork (stdlib only)

    signals.hold()  # first: a SIGTERM from now on is recorded, not fatal (launcher.signals)
    from launcher import netchild  # noqa: PLC0415 - startup: the fork (stdlib only)
    from launcher.errors import LauncherError  # noqa: PLC0415 - startup: the fork

    level = _peek_log_level(argv)
    try:
        child: Started | None = netchild.fork(log_level=level)
    except LauncherError:
        child = None
    from launcher.privsep.helper import Helper  # noqa: PLC0415 - startup: the fork (lean)

    try:
        helper: Helper | None = Helper.fork(log_level=level)
    except LauncherError:
        helper = None
    return child, helper


# --------------------------------------------------------------------------- no TLS


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

    The launcher never speaks TLS: the status endpoint is plain HTTP on loopback or a
    unix socket, cloud-hypervisor's API a unix socket. aiohttp treats a missing ``ssl``
    as "no TLS support" and then builds no default TLS contexts at import (which parse
    the whole system CA bundle). ``ssl`` is hidden only while the body imports and put
    back afterwards, so libraries that import it unconditionally (qemu.qmp, pyroute2,
    prometheus-client) still get it. The standard library modules that define TLS names
    only when ``ssl`` imports (``http.client``, ``urllib.request``) are imported first,
    with ``ssl``, so later users of them find those names.
    """
    for stdlib in _SSL_AWARE_STDLIB:
        importlib.import_module(stdlib)
    with _ssl_hidden():
        yield


def import_asyncio() -> None:
    """Import asyncio with ``ssl`` hidden (does nothing when asyncio is already imported).

    Called first thing by ``virt-launcher run``: asyncio would otherwise load ``ssl`` on
    the way to the VMM spawn; qemu.qmp imports it later, in a thread, off that path.
    """
    if "asyncio" not in sys.modules:
        with _ssl_hidden():
            importlib.import_module("asyncio")


# --------------------------------------------------------------------------- pyroute2


def lean_pyroute2() -> None:
    """Register the pyroute2 package without running its ``__init__``, then import
    ``pyroute2.iproute.linux``.

    pyroute2's ``__init__`` imports every API it has (NDB, IPDB, conntrack, nftables,
    plan9…) although the launcher's one adapter (:mod:`launcher.network.netlink`) uses
    only ``iproute.linux``, ``netlink.exceptions`` and ``netns``; its submodules still
    load from the installed package directory. ``from pyroute2 import IPRoute`` fails
    afterwards (a unit test keeps the launcher free of such imports). Does nothing when
    pyroute2 is already imported. Raises ImportError when it is not installed.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("the pyroute2 package is not installed")
    package = types.ModuleType("pyroute2")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["pyroute2"] = package
    importlib.import_module("pyroute2.iproute.linux")


# --------------------------------------------------------------------------- lazy exports


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each exported name is imported from its
    module (``where[name]``, relative to ``package`` when it starts with a dot) on first
    use, and cached in the package's namespace. Use as
    ``__getattr__ = lazy_exports(__name__, {...})`` beside a ``TYPE_CHECKING`` import
    block naming the same things for type checkers."""
    table = dict(where)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


# --------------------------------------------------------------------------- threads


def preload_hypervisor(kind: str) -> None:
    """Import the hypervisor adapter (``launcher.run`` runs this in a thread while the
    netlink child applies the network). cloud-hypervisor's client imports aiohttp: here
    first, without ``ssl``."""
    if kind == "qemu":
        importlib.import_module("hypervisor.qemu")
        return
    with without_ssl():
        importlib.import_module("hypervisor.cloud_hypervisor")


def import_servers() -> None:
    """Import the DHCP/RA servers' modules (``launcher.run``: in a thread, while the
    VMM starts; :mod:`launcher.nics` then finds them imported)."""
    for name in SERVER_MODULES:
        importlib.import_module(name)


# --------------------------------------------------------------------------- the end of start-up

_gc_paused = False


def pause_gc() -> None:
    """No cyclic garbage collection while the start-up imports run (``launcher.entry``,
    for ``run``, before the forks; the helper turns it back on in itself).

    Start-up allocates tens of thousands of long-lived objects (modules, classes,
    functions); the collector would walk them again and again, finding nothing to free.
    """
    global _gc_paused  # noqa: PLW0603 - one process-wide switch, like gc's own
    gc.disable()
    _gc_paused = True


def start_up_done() -> None:
    """The VM runs, its servers listen, the privileges are dropped (``launcher.run``):
    what start-up used is put away.

    The objects made so far are moved out of the collector's generations
    (``gc.freeze``: later collections, and the idle launcher's, do not walk them again)
    and collection is back on; the dataclass code cache (:mod:`launcher.dataclass_code`)
    is let go.
    """
    from launcher import dataclass_code  # noqa: PLC0415 - startup: dataclass code

    global _gc_paused  # noqa: PLW0603 - the same
    stats = dataclass_code.stats()
    dataclass_code.disable()
    if _gc_paused:  # else (a run called in-process, tests) the caller's GC is left alone
        gc.freeze()
        gc.enable()
        _gc_paused = False
    logging.getLogger(__name__).debug(
        "start-up done: dataclass code %d of %d texts used, %d compiled; %d objects frozen",
        stats.hits,
        stats.entries,
        stats.compiled,
        gc.get_freeze_count(),
        extra={"event": "start-up-done"},
    )

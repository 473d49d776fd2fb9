"""The launcher's nftables ruleset: fragments from the bindings, rendered and applied whole.

Bindings contribute :class:`NftFragment` rule lines while planning; ``render`` turns all
of them into ONE ``nft -f`` document that (re)creates the launcher's two tables —
``inet virt_launcher`` (NAT for masquerade) and ``bridge virt_launcher`` (DHCP/RA
containment and anti-spoofing on the bridge ports) — and ``apply_ruleset`` loads it in
one transaction (nft applies a whole file atomically). The document starts by creating
and deleting each table, so loading it again replaces the tables instead of adding
duplicates. Called by ``plan`` (render) and ``apply``/``cleanup``.

The rules are loaded through **libnftables**, the library the ``nft`` command is a thin
front end to (Debian's ``libnftables1``; the image's ``nftables`` package depends on it
and keeps ``nft`` for people debugging the pod), called with :mod:`ctypes` — by hand,
because the netfilter project's own Python binding (``python3-nftables``) is this same
ctypes wrapper packaged only for Debian's system Python, and PyPI has only an unofficial
copy frozen at nftables 1.0.2. In-process it costs ≈0.3 ms a ruleset instead of a
process (≈4 ms) — and, more, the library's context is closed on another thread: closing
its netlink socket right after a transaction that deleted a table waits for the kernel's
RCU grace period (nf_tables' destroy work, 8–20 ms on the test VM), which ``nft``, whose
exit closes it, makes its caller wait for; and as that close holds the netns' nf_tables
mutex, which making a link waits for, ``apply`` closes its contexts only after its links
are made (:func:`deferred_close`). One lock serializes the library's calls (it keeps
process-global caches).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from launcher.errors import NetworkError

from .names import NFT_TABLE
from .netlink import run_in_netns

__all__ = [
    "NftFragment",
    "apply_ruleset",
    "delete_tables",
    "list_tables",
    "check_library",
    "available",
    "deferred_close",
    "reload_document",
    "render",
]

log = logging.getLogger(__name__)
LIBRARY = "libnftables.so.1"


@dataclass(frozen=True, slots=True)
class NftFragment:
    """Rule lines one guest NIC adds to the launcher's chains (nft syntax, one rule a line)."""

    inet_sets: tuple[str, ...] = ()  # whole ``set name { … }`` blocks
    prerouting: tuple[str, ...] = ()  # inet nat, priority dstnat
    output: tuple[str, ...] = ()  # inet nat output, priority dstnat (loopback DNAT)
    postrouting: tuple[str, ...] = ()  # inet nat, priority srcnat
    bridge_prerouting: tuple[str, ...] = ()  # bridge filter: frames entering a port
    bridge_postrouting: tuple[str, ...] = ()  # bridge filter: frames leaving a port


def _chain(name: str, hook: str, kind: str, priority: str, rules: Sequence[str]) -> list[str]:
    lines = [
        f"\tchain {name} {{",
        f"\t\ttype {kind} hook {hook} priority {priority}; policy accept;",
    ]
    lines += [f"\t\t{rule}" for rule in rules]
    lines.append("\t}")
    return lines


def render(fragments: Iterable[NftFragment]) -> str:
    """The whole nft document for these fragments ('' when they add no rule)."""
    frags = list(fragments)

    def gather(attr: str) -> list[str]:
        return [line for f in frags for line in getattr(f, attr)]

    inet_sets = gather("inet_sets")
    nat = {a: gather(a) for a in ("prerouting", "output", "postrouting")}
    br = {a: gather(a) for a in ("bridge_prerouting", "bridge_postrouting")}
    out: list[str] = []
    if inet_sets or any(nat.values()):
        out += [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
        out.append(f"table inet {NFT_TABLE} {{")
        out += [f"\t{line}" for line in inet_sets]
        out += _chain("prerouting", "prerouting", "nat", "dstnat", nat["prerouting"])
        out += _chain("output", "output", "nat", "-100", nat["output"])
        out += _chain("postrouting", "postrouting", "nat", "srcnat", nat["postrouting"])
        out.append("}")
    if any(br.values()):
        out += [f"table bridge {NFT_TABLE}", f"delete table bridge {NFT_TABLE}"]
        out.append(f"table bridge {NFT_TABLE} {{")
        out += _chain("prerouting", "prerouting", "filter", "-300", br["bridge_prerouting"])
        out += _chain("postrouting", "postrouting", "filter", "300", br["bridge_postrouting"])
        out.append("}")
    return "\n".join(out) + "\n" if out else ""


class _Library:
    """libnftables' few functions, typed; loaded once, on first use."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(LIBRARY)  # OSError when it is missing or not a library
        ptr = ctypes.c_void_p
        lib.nft_ctx_new.argtypes, lib.nft_ctx_new.restype = [ctypes.c_uint32], ptr
        lib.nft_ctx_free.argtypes, lib.nft_ctx_free.restype = [ptr], None
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes, getattr(lib, name).restype = [ptr], ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes, getattr(lib, name).restype = [ptr], ctypes.c_char_p
        run = lib.nft_run_cmd_from_filename
        run.argtypes, run.restype = [ptr, ctypes.c_char_p], ctypes.c_int
        self.lib = lib
        self.held = 0  # open deferred_close() blocks
        self.kept: list[int] = []  # contexts they keep open

    def run(self, command: str) -> tuple[int, str, str]:
        """(status, output, error text) of ``command`` in a new context (its netlink
        socket opens in the calling thread's netns); the context is closed on another
        thread, at once or when the enclosing :func:`deferred_close` ends."""
        lib = self.lib
        with _LOCK:
            ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
            if not ctx:
                raise NetworkError("libnftables could not make a context (out of memory)")
            if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
                lib.nft_ctx_free(ctx)
                raise NetworkError("libnftables could not buffer its output")
            # read from a file, not a buffer: libnftables 1.0.6 quotes the wrong line of
            # a multi-line buffer in its error messages
            try:
                fd = os.memfd_create("nft-ruleset", os.MFD_CLOEXEC)
                try:
                    os.write(fd, command.encode())
                    path = f"/proc/self/fd/{fd}"
                    status = lib.nft_run_cmd_from_filename(ctx, path.encode())
                finally:
                    os.close(fd)
            except OSError as failure:
                lib.nft_ctx_free(ctx)
                reason = f"cannot hand the ruleset to libnftables: {failure}"
                raise NetworkError(reason) from failure
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            err = err.replace(f"{path}:", "line ")
            if self.held:
                self.kept.append(ctx)
                return status, out, err
        self.close_later([ctx])
        return status, out, err

    def close_later(self, contexts: list[int]) -> None:
        """Close ``contexts`` on a daemon thread (the caller does not wait for the kernel)."""
        if contexts:
            threading.Thread(
                target=self._free, args=(contexts,), name="nft-close", daemon=True
            ).start()

    def _free(self, contexts: list[int]) -> None:
        with _LOCK:
            for ctx in contexts:
                self.lib.nft_ctx_free(ctx)


_LOCK = threading.Lock()
_loaded: list[_Library] = []


@contextmanager
def deferred_close() -> Iterator[None]:
    """Keep the libnftables contexts used inside open until the block ends.

    Closing a context's netlink socket right after a commit that deleted a table takes
    the netns' nf_tables commit mutex while the kernel waits for an RCU grace period, and
    creating or deleting a link in that netns waits for the same mutex (measured: a tap
    made meanwhile took 9–25 ms instead of 0.4). ``apply`` and ``cleanup`` wrap their
    link work in this block, so the contexts close (on another thread) after it."""
    try:
        lib: _Library | None = _library()
    except NetworkError:  # reported by the first nft call inside, if there is one
        lib = None
    if lib is None:
        yield
        return
    with _LOCK:
        lib.held += 1
    try:
        yield
    finally:
        with _LOCK:
            lib.held -= 1
            kept, lib.kept = (lib.kept, []) if lib.held == 0 else ([], lib.kept)
        lib.close_later(kept)


def _library() -> _Library:
    with _LOCK:
        if not _loaded:
            try:
                _loaded.append(_Library())
            except (OSError, AttributeError) as err:
                raise NetworkError(
                    f"libnftables ({LIBRARY}) cannot be loaded: {err}; the launcher's image "
                    "needs Debian's libnftables1 (installed with nftables): the guest's "
                    "anti-spoofing and NAT rules are loaded through it"
                ) from err
        return _loaded[0]


def check_library() -> None:
    """libnftables loads; NetworkError naming it otherwise."""
    _library()


def available() -> bool:
    """Whether libnftables loads (when it does not, no launcher table can exist)."""
    try:
        _library()
    except NetworkError:
        return False
    return True


def _nft(command: str, netns: str | None, what: str) -> str:
    lib = _library()

    def run() -> str:
        status, out, err = lib.run(command)
        if status != 0:
            raise NetworkError(f"nft {what} failed: {err.strip()[:800] or 'no message'}")
        return out

    return run_in_netns(netns, run)


def apply_ruleset(document: str, netns: str | None = None) -> None:
    """Load ``document`` in one nft transaction (all or nothing)."""
    if not document:
        return
    log.debug("--> nft: load %d lines", document.count("\n"))
    _nft(document, netns, "loading the ruleset")


def list_tables(netns: str | None = None) -> str:
    """The launcher's tables as ``nft list`` prints them ('' if none exist)."""
    out = []
    for family in ("inet", "bridge"):
        try:
            out.append(_nft(f"list table {family} {NFT_TABLE}", netns, "list"))
        except NetworkError:
            continue
    return "".join(out)


def reload_document(listing: str) -> str:
    """An nft document that replaces the launcher's tables by ``listing`` (what
    :func:`list_tables` printed earlier): both tables are deleted, the listed ones made."""
    drop = "".join(
        f"table {family} {NFT_TABLE}\ndelete table {family} {NFT_TABLE}\n"
        for family in ("inet", "bridge")
    )
    return drop + listing


def delete_tables(netns: str | None = None) -> None:
    """Delete the launcher's tables in one transaction (no error if they are absent)."""
    doc = "".join(
        f"table {family} {NFT_TABLE}\ndelete table {family} {NFT_TABLE}\n"
        for family in ("inet", "bridge")
    )
    _nft(doc, netns, "deleting the launcher's tables")

"""TEST-ONLY fault injection into ``launcher.network.apply``: kill -9, fail, fill the
state dir or hang before its N-th pod-changing step (or fail before the first step of
a name: the nftables load runs in a thread beside the netlink steps, so its number
varies).

Used by the transaction tests and ``python -m testbed.runner --kill-at/--fail-at/
--fill-state-at/--count-steps``. Nothing in the launcher knows about it: :func:`armed`
wraps, in this process only and for as long as the ``with`` lasts, every function
through which ``apply`` changes anything — the netlink adapter's write methods, the
state-dir writes and removals, the pod-level sysctl writes and the nftables load — so a
test (or a forked child, which inherits the wrapping) can stop an apply between any two
steps without a debugger. Steps are counted across threads (the nftables load runs in
its own); once a ``fail``/``fill`` fault has fired the wrapping goes quiet, so the
rollback that follows runs normally.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import NetworkError
from launcher.network import nftables, state
from launcher.network.netlink import Netlink

# the module (``launcher.network.apply`` as an attribute is the function of that name)
apply_module = importlib.import_module("launcher.network.apply")

#: Netlink methods that change the pod netns.
NETLINK_WRITES = (
    "add_bridge",
    "add_tap",
    "add_veth",
    "set_link",
    "set_learning",
    "set_link_settings",
    "add_address",
    "del_address",
    "release",
    "add_route",
    "delete",
)
PAUSE_S = 120.0
_MAX_FILL = 64 << 20  # never fill a file system bigger than this (a test tmpfs only)


@dataclass
class Faults:
    """What to do before which step (1-based); ``steps`` records each step's name."""

    kill_at: int | None = None
    fail_at: int | None = None
    fill_at: int | None = None
    fail_from: int | None = None  # fail step N and every later one (the rollback's too)
    pause_at: int | None = None  # sleep (bounded: PAUSE_S) before step N, e.g. to cancel
    fail_on: str | None = None  # fail the first step of this name ("nftables.apply_ruleset")
    state_dir: Path | None = None
    steps: list[str] = field(default_factory=list)
    quiet: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self, what: str) -> None:
        with self._lock:
            if self.quiet:
                return
            self.steps.append(what)
            n = len(self.steps)
            if n == self.pause_at:
                time.sleep(PAUSE_S)
            if n == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if n == self.fill_at:
                self.quiet = True
                fill(self.state_dir)
            if self.fail_from is not None and n >= self.fail_from:
                raise NetworkError(f"injected lasting failure at step {n} ({what})")
            if n == self.fail_at or what == self.fail_on:
                self.quiet = True
                raise NetworkError(f"injected failure before step {n} ({what})")


def fill(directory: Path | None) -> None:
    """Fill the (small, test) file system of ``directory`` until ENOSPC."""
    if directory is None:
        raise ValueError("fill needs the state dir")
    st = os.statvfs(directory)
    if st.f_blocks * st.f_frsize > _MAX_FILL:
        raise ValueError(f"refusing to fill {directory}: not a small test file system")
    with open(directory / "filler", "wb") as fh:
        chunk = b"\0" * 4096
        while True:
            try:
                fh.write(chunk)
                fh.flush()
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
    with contextlib.suppress(OSError):
        # the partly written last chunk may still be buffered: drop it
        os.truncate(directory / "filler", os.path.getsize(directory / "filler"))


def _wrap(faults: Faults, what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        faults.step(what)
        return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def armed(faults: Faults) -> Iterator[Faults]:
    """Wrap apply's pod-changing functions with ``faults`` while the block runs."""
    patches: list[tuple[Any, str, Any]] = []
    for name in NETLINK_WRITES:
        patches.append((Netlink, name, getattr(Netlink, name)))
    for name in ("write_text_atomic", "remove_txn", "remove_record"):
        patches.append((state, name, getattr(state, name)))
    patches.append((apply_module, "write_sysctls", apply_module.write_sysctls))
    patches.append((nftables, "apply_ruleset", nftables.apply_ruleset))
    try:
        for owner, name, original in patches:
            label = f"{getattr(owner, '__name__', owner)}.{name}".rsplit(".", 2)[-2:]
            setattr(owner, name, _wrap(faults, ".".join(label), original))
        yield faults
    finally:
        for owner, name, original in patches:
            setattr(owner, name, original)

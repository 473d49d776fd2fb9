"""SIGTERM and SIGINT outside the run's event loop: recorded, never fatal.

``virt-launcher run`` must end with a documented exit code, a log line and the
termination message whenever kubelet's SIGTERM (or a Ctrl-C) comes, even in the first
milliseconds after exec (before the event loop handles signals) or while the process
is already exiting. :mod:`launcher.entry` calls :func:`hold` first thing for ``run``
(before forking the netlink child, which calls :func:`release`); the composition root
(:mod:`launcher.run`) installs its loop handlers, replays what :func:`take` returns as
stop requests, and calls :func:`hold` again when it removes them. Imports nothing but
the standard library's ``signal`` (it runs before anything else is imported).
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["hold", "release", "take", "STOP_SIGNALS"]

#: The signals that ask the launcher to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_pending: list[str] = []


def _record(signum: int, frame: FrameType | None) -> None:
    del frame
    _pending.append(signal.Signals(signum).name)  # a list append: safe in a handler


def hold() -> None:
    """From now on SIGTERM/SIGINT are recorded (see :func:`take`) instead of ending the process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


def release() -> None:
    """Back to the defaults (the forked netlink child: it may be ended by a signal)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def take() -> list[str]:
    """The names of the signals recorded since the last call, oldest first."""
    names = list(_pending)
    del _pending[: len(names)]
    return names

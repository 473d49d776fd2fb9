"""SIGTERM and SIGINT outside the run's event loop: recorded, never fatal.

``virt-launcher run`` must end with a documented exit code, a log line and the
termination message whenever kubelet's SIGTERM (or a Ctrl-C) comes, even in the first
milliseconds after exec (before the event loop handles signals) or while the process
is already exiting. :mod:`launcher.entry` calls :func:`hold` first thing for ``run``
(before forking the netlink child, which calls :func:`release`); the composition root
(:mod:`launcher.run`) installs its loop handlers, replays what :func:`take` returns as
stop requests, and calls :func:`hold` again when it removes them; once the CLI returns the
exit code, :mod:`launcher.entry` calls :func:`ignore` for the shutdown. Imports nothing but
the standard library's ``signal`` (it runs before anything else is imported).
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["hold", "ignore", "release", "take", "STOP_SIGNALS"]

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


def ignore() -> None:
    """Ignore SIGTERM/SIGINT from now to the exit: the exit code is decided.

    Recording is not enough then: the interpreter's own shutdown puts the default
    handler back for every signal that has a Python handler (before it tears down the
    modules, which takes tens of ms in a launcher), so a second SIGTERM from kubelet in
    that window would still kill the process and turn its documented exit code into
    "killed by signal 15". An ignored signal stays ignored through the shutdown."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def release() -> None:
    """Back to the defaults (the forked netlink child: it may be ended by a signal)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def take() -> list[str]:
    """The names of the signals recorded since the last call, oldest first."""
    names = list(_pending)
    del _pending[: len(names)]
    return names

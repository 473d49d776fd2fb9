"""The ``virt-launcher`` console script and ``python -m launcher``: the CLI, with
``run``'s netlink child and privileged helper forked before the CLI is even imported.

``virt-launcher run`` is on the pod's start-up path, and a Python process spends its
first ~100 ms importing (argparse, logging, the CLI, asyncio). The netlink child
(:mod:`launcher.agent`) does not need any of that to start importing pyroute2 and the
network package, so for ``run`` this module forks it first and hands it to
:func:`launcher.cli.main`; the two processes then import side by side on the pod's two
cores. Every other command goes straight to the CLI. The log level is peeked from
``argv`` (``--log-level X`` / ``--log-level=X``) for the child's own log lines; the CLI
parses the arguments for real and reports any mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def _peek_log_level(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--log-level" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--log-level="):
            return arg.partition("=")[2]
    return "info"


_GLOBAL_WITH_VALUE = ("--spec", "--log-level")  # the options before the command


def _command(argv: Sequence[str]) -> str | None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    agent = helper = None
    if _command(args) == "run" and "-h" not in args and "--help" not in args:
        from launcher import signals  # noqa: PLC0415 - first: a SIGTERM now must not kill

        signals.hold()
        from launcher.errors import LauncherError  # noqa: PLC0415
        from launcher.privsep.helper import Helper  # noqa: PLC0415

        try:  # first, while this process has imported little: the helper carries little
            helper = Helper.fork(log_level=_peek_log_level(args))
        except LauncherError:
            helper = None  # the CLI forks it again and reports the failure properly
        from launcher.notls import import_asyncio  # noqa: PLC0415

        import_asyncio()
        from launcher.agent import Agent  # noqa: PLC0415

        try:
            agent = Agent.fork(log_level=_peek_log_level(args))
        except LauncherError:
            agent = None  # the CLI forks again and reports the failure properly
    from launcher.cli import main as cli_main  # noqa: PLC0415

    return cli_main(args, agent=agent, helper=helper)


if __name__ == "__main__":
    sys.exit(main())

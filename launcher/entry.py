"""The ``virt-launcher`` console script and ``python -m launcher``: the CLI, with
``run``'s netlink child forked before the CLI is even imported.

``virt-launcher run`` is on the pod's start-up path: the netlink child
(:mod:`launcher.agent`) does not need argparse, logging or the CLI to start importing
pyroute2 and the network package, so for ``run`` this module forks it first
(:func:`launcher.startup.fork_netlink_child`, the first row of that module's table) and
hands it to :func:`launcher.cli.main`; the two processes then import side by side on the
pod's two cores. Every other command goes straight to the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from launcher.startup import fork_netlink_child

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    agent = fork_netlink_child(args)
    from launcher.cli import main as cli_main  # noqa: PLC0415 - startup: the fork comes first

    return cli_main(args, agent=agent)


if __name__ == "__main__":
    sys.exit(main())

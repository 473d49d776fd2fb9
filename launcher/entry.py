"""The ``virt-launcher`` console script and ``python -m launcher``: the CLI, with
``run``'s netlink child and privileged helper forked before the CLI is even imported.

``virt-launcher run`` is on the pod's start-up path: the netlink child
(:mod:`launcher.netchild`) does not need argparse, logging or the CLI to start importing
pyroute2 and the network package, so for ``run`` this module forks it — and the
privileged helper — first (:func:`launcher.startup.fork_children`, the first rows of that
module's table) and hands them to :func:`launcher.cli.main`; the child and this process
then import side by side on the pod's two cores. Every other command goes straight to the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from launcher import signals
from launcher.startup import command_of, fork_children, pause_gc

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = command_of(args)
    if command == "run":
        pause_gc()  # until launcher.startup.start_up_done
    child, helper = fork_children(args)
    if command != "status":  # the exec probe defines few dataclasses
        from launcher import dataclass_code  # noqa: PLC0415 - startup: dataclass code

        dataclass_code.enable()  # after the forks: the helper does not carry the cache
    from launcher.cli import main as cli_main  # noqa: PLC0415 - startup: the forks come first

    code = cli_main(args, child=child, helper=helper)
    if command == "run":
        signals.ignore()  # the exit code is decided: no late SIGTERM may turn it into a kill
    return code


if __name__ == "__main__":
    sys.exit(main())

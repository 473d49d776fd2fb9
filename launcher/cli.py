"""Command line of ``virt-launcher`` (also ``python -m launcher``).

``validate`` checks the spec and prints a one-line summary, ``plan`` prints the
normalized model as JSON without changing anything, ``run`` is the pod entrypoint (for
now it only loads the spec: the composition root plugs in behind :func:`run`). Exit
codes come from :mod:`launcher.errors`: 0 ok, 2 invalid spec or usage, 1 unexpected.
Expected errors never print a traceback; an unexpected one prints one ERROR line (the
traceback only at ``--log-level debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from launcher import logs
from launcher.errors import EXIT_INTERNAL, EXIT_OK, LauncherError, SpecError
from launcher.jsonable import to_jsonable
from launcher.spec import VmSpec, format_bytes, load

__all__ = [
    "DEFAULT_SPEC_PATH",
    "SPEC_ENV",
    "Options",
    "main",
    "parse_args",
    "plan",
    "run",
    "summary",
    "validate",
]

log = logging.getLogger(__name__)

DEFAULT_SPEC_PATH = Path("/etc/virt-launcher/vm.yaml")
SPEC_ENV = "VIRT_LAUNCHER_SPEC"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Options:
    """The parsed command line."""

    command: str
    spec_path: Path
    log_level: str = "info"


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--spec",
        metavar="FILE",
        default=default,
        help=f"the VM manifest, YAML or JSON (default: ${SPEC_ENV}, else {DEFAULT_SPEC_PATH})",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help="log verbosity; logs are JSON lines on stderr (default: info)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with the three subcommands."""
    parser = argparse.ArgumentParser(
        prog="virt-launcher",
        description="The entrypoint of a VM pod: reads the VM spec, wires the pod network "
        "to the guest and supervises the hypervisor.",
    )
    _add_common(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "validate": "check the spec and print a one-line summary (exit 2 listing every problem)",
        "plan": "print the normalized spec as JSON; changes nothing",
        "run": "start and supervise the VM (the pod entrypoint)",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        _add_common(sub, argparse.SUPPRESS)  # so --spec works before or after the command
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Options:
    """``argv`` (without the program name) as :class:`Options`; exits 2 on usage errors."""
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(list(argv))
    spec = ns.spec or env.get(SPEC_ENV) or str(DEFAULT_SPEC_PATH)
    return Options(command=ns.command, spec_path=Path(spec), log_level=ns.log_level or "info")


def summary(spec: VmSpec) -> str:
    """One line describing a valid spec, as ``validate`` prints it."""
    kinds = ", ".join(dict.fromkeys(i.binding.kind.value for i in spec.interfaces))
    ifaces = f"{len(spec.interfaces)} interface{'' if len(spec.interfaces) == 1 else 's'}"
    if kinds:
        ifaces += f" ({kinds})"
    disks = f"{len(spec.disks)} disk{'' if len(spec.disks) == 1 else 's'}"
    return (
        f"ok: {spec.shape.value} {spec.namespace}/{spec.name}: {spec.cpu.vcpus} vCPU, "
        f"{format_bytes(spec.memory_bytes)}, {ifaces}, {disks}"
    )


def validate(options: Options, out: TextIO) -> int:
    """``virt-launcher validate``: load the spec and print its summary."""
    spec = load(options.spec_path)
    print(summary(spec), file=out)
    return EXIT_OK


def plan(options: Options, out: TextIO) -> int:
    """``virt-launcher plan``: the normalized model as JSON (``{"spec": ...}``)."""
    spec = load(options.spec_path)
    json.dump({"spec": to_jsonable(spec)}, out, indent=2)
    out.write("\n")
    return EXIT_OK


def run(options: Options) -> int:
    """``virt-launcher run``: the pod entrypoint. Only the spec stage exists so far."""
    spec = load(options.spec_path)
    logs.set_context(vm=f"{spec.namespace}/{spec.name}")
    log.info("spec loaded", extra={"event": "spec-loaded", "summary": summary(spec)})
    raise LauncherError(
        "virt-launcher run is not implemented yet: network setup and the hypervisor "
        "supervisor have not landed (use validate or plan)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``virt-launcher`` console script; returns the exit code."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(options.log_level)
    try:
        if options.command == "validate":
            return validate(options, sys.stdout)
        if options.command == "plan":
            return plan(options, sys.stdout)
        return run(options)
    except SpecError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return err.exit_code
    except LauncherError as err:
        log.error("%s", err, extra={"event": "error"})
        log.debug("traceback", exc_info=err)
        return err.exit_code
    except Exception as err:  # the one place an unexpected error becomes exit 1
        log.error("unexpected error: %s: %s", type(err).__name__, err, extra={"event": "crash"})
        log.debug("traceback", exc_info=err)
        return EXIT_INTERNAL

"""The launcher's one exception tree and its exit codes.

Every failure the launcher reports derives from :class:`LauncherError`. Each class
carries the process exit code the CLI returns for it, so the composition root maps an
exception to an exit code in one place (``exit_code_for``). Messages are one sentence
naming the offending value; wrap lower-level errors with ``raise … from err``; never
convert :class:`asyncio.CancelledError`.

::

    LauncherError                     exit 1  (unexpected: a bug)
    ├── UsageError                    exit 2  bad command line
    ├── SpecError                     exit 2  invalid VM spec (carries every Problem)
    ├── VolumeError                   exit 2  a file the spec names (kernel, disk) is not in the pod
    ├── PodInfoError                  exit 3  downward-API / Multus annotations / device-plugin env
    ├── NetworkError                  exit 3  pod network discovery, plan or apply failed
    │   └── StateCacheError           exit 3  the state dir holds a half-done or foreign phase
    ├── GraceExpiredError             exit 5  the guest did not power off within the grace period
    └── StatusServerError             exit 6  the local status endpoint could not be served

    hypervisor.errors.HypervisorError exit 4  the VMM failed to start, crashed or refused a request
    ├── StateError                    exit 4  an operation called in the wrong VmState
    └── ApiError                      exit 4  the VMM API answered an error (endpoint, status, body)

``hypervisor`` and ``dhcp`` stand alone (they import nothing from ``launcher``) and have
their own trees. The hypervisor's errors carry their exit code and are re-exported here;
:data:`EXPECTED_ERRORS` is what the launcher catches as "reported, not a bug". The DHCP
package's (``dhcp.errors``) are wrapped in :class:`NetworkError` where the launcher calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hypervisor.errors import ApiError, HypervisorError, StateError

__all__ = [
    "EXIT_GRACE_EXPIRED",
    "EXIT_HYPERVISOR",
    "EXIT_INTERNAL",
    "EXIT_INVALID",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_STATUS_SERVER",
    "ApiError",
    "GraceExpiredError",
    "HypervisorError",
    "LauncherError",
    "NetworkError",
    "PodInfoError",
    "Problem",
    "SpecError",
    "StateCacheError",
    "StateError",
    "StatusServerError",
    "UsageError",
    "VolumeError",
    "exit_code_for",
    "EXPECTED_ERRORS",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2
EXIT_NETWORK = 3
EXIT_HYPERVISOR = 4
EXIT_GRACE_EXPIRED = 5
EXIT_STATUS_SERVER = 6


class LauncherError(Exception):
    """Base of every error the launcher reports; ``exit_code`` is the process exit code."""

    exit_code: int = EXIT_INTERNAL


class UsageError(LauncherError):
    """The command line is wrong (unknown option value, missing argument)."""

    exit_code = EXIT_INVALID


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem: the field path in the manifest and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(LauncherError):
    """The VM spec is invalid; ``problems`` lists every problem found, in document order."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("SpecError needs at least one problem")
        count = len(self.problems)
        first = str(self.problems[0])
        summary = first if count == 1 else f"{first} (and {count - 1} more)"
        super().__init__(summary)

    def lines(self) -> list[str]:
        """Every problem as one ``path: message`` line."""
        return [str(p) for p in self.problems]


class VolumeError(LauncherError):
    """A kernel, initrd or disk file the spec names is missing or unusable in the pod.

    Exit 2 like an invalid spec: the pod's inputs are wrong and a restart will not help.
    """

    exit_code = EXIT_INVALID


class PodInfoError(LauncherError):
    """The downward-API files, the Multus network-status or a device-plugin variable is wrong."""

    exit_code = EXIT_NETWORK


class NetworkError(LauncherError):
    """Discovering, planning or applying the pod network failed."""

    exit_code = EXIT_NETWORK


class StateCacheError(NetworkError):
    """The state dir records a phase the launcher cannot safely continue from."""


class GraceExpiredError(LauncherError):
    """The guest did not power off within the termination grace period and was stopped hard."""

    exit_code = EXIT_GRACE_EXPIRED


class StatusServerError(LauncherError):
    """The local status endpoint could not bind or serve."""

    exit_code = EXIT_STATUS_SERVER


#: Every error the launcher expects and reports with its own exit code (the launcher's
#: tree and the hypervisor package's); anything else is a bug (exit 1).
EXPECTED_ERRORS: tuple[type[Exception], ...] = (LauncherError, HypervisorError)


def exit_code_for(err: BaseException) -> int:
    """The documented process exit code for ``err`` (1 for anything unexpected)."""
    if isinstance(err, LauncherError | HypervisorError):
        return err.exit_code
    return EXIT_INTERNAL

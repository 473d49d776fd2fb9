"""The hypervisor package's own exception tree: what a VMM adapter raises.

``hypervisor`` stands alone (like ``dhcp``): it imports nothing from ``launcher``. Its
errors carry the process exit code a launcher returns for them (``exit_code``), so the
launcher's one mapping (:func:`launcher.errors.exit_code_for`) covers them without
wrapping every call; ``launcher.errors`` re-exports them and draws them in its tree.

::

    HypervisorError        exit 4  the VMM failed to start, crashed or refused a request
    ├── StateError         exit 4  an operation called in the wrong VmState
    └── ApiError           exit 4  the VMM API answered an error (endpoint, status, body)

Messages are one sentence naming the offending value; wrap lower-level errors with
``raise … from err``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["HypervisorError", "StateError", "ApiError", "EXIT_HYPERVISOR"]

#: The process exit code for every hypervisor failure (the launcher's documented code 4).
EXIT_HYPERVISOR = 4


class HypervisorError(Exception):
    """The hypervisor process failed to start, exited unexpectedly or refused a request."""

    exit_code: int = EXIT_HYPERVISOR


class StateError(HypervisorError):
    """An operation was called in a VmState that does not allow it."""

    def __init__(self, state: object, required: Iterable[object]) -> None:
        self.state = state
        self.required = tuple(required)
        names = ", ".join(str(r) for r in self.required)
        super().__init__(f"operation needs state {names} but the VM is {state}")


class ApiError(HypervisorError):
    """The hypervisor API answered with an error status."""

    def __init__(self, endpoint: str, status: int, body: str) -> None:
        self.endpoint = endpoint
        self.status = status
        self.body = body
        super().__init__(f"{endpoint} answered HTTP {status}: {body.strip()[:500]!r}")

"""The run's phase: one enum for the run, the supervisor and the status endpoint.

Set by the composition root (``launcher.run``) and by the supervisor
(``launcher.supervisor``: HYPERVISOR, RUNNING, STOPPING); the status board
(``launcher.status.model``) is told each change (an event in ``/status``, and the
``stopping`` reason once the run winds down). The order is the order a run goes through::

    starting → network → dhcp → hypervisor → running → stopping → cleanup → exited

(``dhcp``: the pod is wired and the DHCP/RA servers are being prepared while the VMM is
started; the servers listen before the guest can ask.)
"""

from __future__ import annotations

import enum

__all__ = ["Phase", "STOPPING_PHASES"]


class Phase(enum.StrEnum):
    """Where a run stands."""

    STARTING = "starting"
    NETWORK = "network"
    DHCP = "dhcp"
    HYPERVISOR = "hypervisor"
    RUNNING = "running"
    STOPPING = "stopping"
    CLEANUP = "cleanup"
    EXITED = "exited"


#: The phases of a run that is winding down (``/readyz`` fails from the first of them).
STOPPING_PHASES = frozenset({Phase.STOPPING, Phase.CLEANUP, Phase.EXITED})

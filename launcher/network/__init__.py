"""Pod network: discover the netns the CNI left, plan the guest's wiring, apply it.

Called by the composition root (``discover`` → ``plan`` → ``apply``, ``cleanup`` at
exit, ``recover`` after a failed apply whose netlink child died) and by ``virt-launcher
plan`` (``plan(...).to_json()``). See docs/network.md.
"""

from __future__ import annotations

from .apply import ApplyResult, apply, cleanup, recover
from .discover import PodLink, PodState, discover
from .plan import NetworkPlan, NicPlan, PlanOptions, plan
from .state import DEFAULT_STATE_DIR

__all__ = [
    "discover",
    "plan",
    "apply",
    "cleanup",
    "recover",
    "NetworkPlan",
    "PodState",
    "PlanOptions",
    "NicPlan",
    "PodLink",
    "ApplyResult",
    "DEFAULT_STATE_DIR",
]

"""Test tiers: each folder's tests get its marker; tiers that need root fail, never skip.

``unit/`` pure, ``component/`` asyncio with fakes at the boundary, ``integration/`` real
network namespaces and real DHCP clients, ``e2e/`` a real QEMU guest, ``container/`` the
built image under podman (runc) on a CNI network. CI runs as root on a machine where all
of them can run, so a missing capability is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TIERS = ("unit", "component", "integration", "e2e", "container")
ROOT_TIERS = frozenset({"integration", "e2e", "container"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tier of the folder it lives in."""
    del config
    for item in items:
        parts = Path(str(item.path)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
                break


@pytest.fixture(autouse=True)
def _require_root_for_system_tiers(request: pytest.FixtureRequest) -> None:
    """Integration and e2e tests fail loudly when they cannot run here."""
    tiers = {m.name for m in request.node.iter_markers()} & ROOT_TIERS
    if not tiers:
        return
    if os.geteuid() != 0:
        pytest.fail(f"{sorted(tiers)[0]} tests need root (network namespaces); run as root")
    if shutil.which("ip") is None:
        pytest.fail("iproute2's `ip` is missing: run scripts/install.sh")

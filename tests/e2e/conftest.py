"""Fixtures every e2e test shares: the tiny test guest (built once, cached on disk)."""

from __future__ import annotations

import pytest

from testbed.guest.build import GuestImage, ensure_guest


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    """The test guest (Debian kernel + busybox initramfs), docs/guest.md."""
    return ensure_guest()

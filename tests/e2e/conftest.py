"""Fixtures every e2e test shares: the test guests (built once, cached on disk)."""

from __future__ import annotations

import pytest

from testbed.guest.build import GuestImage, ensure_guest
from testbed.guest.debian import DebianImage, ensure_debian_guest


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    """The test guest (Debian kernel + busybox initramfs), docs/guest.md."""
    return ensure_guest()


@pytest.fixture(scope="session")
def debian_guest() -> DebianImage:
    """The Debian cloud guest disk (docs/guest.md); built on first use (about 75 s cold on
    a quiet machine, every step bounded: mmdebstrap 25 min, the others 10 min each)."""
    return ensure_debian_guest()

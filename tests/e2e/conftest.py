"""Fixtures every e2e test shares: the test guests (built once, cached on disk), and a
directory the VMM's default user (uid 107) can reach with the tiny guest's kernel in it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def vmm_dir(guest: GuestImage) -> Iterator[Path]:
    """A fresh directory uid 107 can traverse (pytest's tmp_path and the guest cache under
    /root cannot be), with ``volumes/kernel/{vmlinuz,initrd.gz}`` copied in, readable."""
    path = Path(tempfile.mkdtemp(prefix="vl-e2e-", dir="/tmp"))
    try:
        path.chmod(0o755)
        kernel = path / "volumes" / "kernel"
        kernel.mkdir(parents=True)
        for name, src in (("vmlinuz", guest.kernel), ("initrd.gz", guest.initrd)):
            shutil.copyfile(src, kernel / name)
            (kernel / name).chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

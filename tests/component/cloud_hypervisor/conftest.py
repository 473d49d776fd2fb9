"""Fixtures: a short socket directory and the fake cloud-hypervisor API served in-process."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.component.cloud_hypervisor.fake_vmm import FakeServer, FakeVmm, event_writer


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short directory for unix sockets (sun_path is limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ch-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def events_pipe() -> Iterator[tuple[int, int]]:
    """A pipe the in-process fake writes event-monitor records to."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.fixture
def fake(events_pipe: tuple[int, int]) -> FakeVmm:
    """A fresh API state machine writing its events to ``events_pipe``."""
    return FakeVmm(emit=event_writer(events_pipe[1]))


@pytest.fixture
def server(sock_dir: str, fake: FakeVmm) -> Iterator[FakeServer]:
    """``fake`` served on ``<sock_dir>/api.sock``; fails the test on any contract violation."""
    with FakeServer(os.path.join(sock_dir, "api.sock"), fake) as srv:
        yield srv
    assert fake.violations == [], fake.violations

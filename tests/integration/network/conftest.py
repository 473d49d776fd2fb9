"""Fixtures for the pod-network integration tests: a fresh nw-* topology per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.netns import Topology


@pytest.fixture
def topo() -> Iterator[Topology]:
    """An uncreated Topology (the test calls ``create``); always destroyed afterwards."""
    t = Topology()
    try:
        yield t
    finally:
        t.destroy()

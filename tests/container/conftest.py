"""Fixtures of the container tier: the image (built once, cached by its inputs), a node
netns with a dual-stack podman network, and the test guest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.guest.build import GuestImage, ensure_guest
from testbed.podman import Network, Node, ensure_image, node

SUFFIX = os.getpid() % 100000
NODE_NETNS = f"vlc-node-{SUFFIX}"
NETWORK = f"vlc-{SUFFIX}"
SUBNET4, SUBNET6 = "10.89.0.0/24", "fd89::/64"


@pytest.fixture(scope="session")
def image() -> str:
    """The launcher image's tag (scripts/image.sh: a few minutes cold, cached after)."""
    return ensure_image()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Network]]:
    """The node (a private netns) and its dual-stack CNI network, for the whole session."""
    with node(NODE_NETNS, tmp_path_factory.mktemp("node")) as the_node:
        yield the_node, the_node.network(NETWORK, SUBNET4, SUBNET6)


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    """The test guest (Debian kernel + busybox initramfs), docs/guest.md."""
    return ensure_guest()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Where a test's pod volumes and logs live on the node."""
    return tmp_path

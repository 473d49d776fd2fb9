"""Fixtures of the container tier: the image (built once, cached by its inputs), a node
netns with a dual-stack podman network, the test guest, and ``pods`` to run Kubernetes
objects (a ConfigMap + Pod list, as ``virt-launcher manifest`` prints) on that node."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from testbed.guest.build import GuestImage, ensure_guest
from testbed.podman import Container, Network, Node, PodStarter, ensure_image, node, translate

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


@pytest.fixture
def pods(cluster: tuple[Node, Network], image: str, files: Path) -> Iterator[PodStarter]:
    """``pods(objects, images=None)`` translates the objects' Pod (its image → the built
    tag; ``images`` maps other references, e.g. a kernel image, to local ones), starts it
    on the cluster network and returns the Container; all are removed afterwards."""
    the_node, network = cluster
    started: list[Container] = []

    def start(objects: list[dict[str, Any]], images: Mapping[str, str] | None = None) -> Container:
        spec = translate(
            objects, files / f"pod-{len(started)}", image=image, images=images,
            network=network.name, name_prefix=f"vlc-{SUFFIX}-",
        )  # fmt: skip
        container = the_node.start(spec, files / "logs")
        started.append(container)
        return container

    try:
        yield start
    finally:
        for container in started:
            container.remove()

"""Fixtures of the container tier: the image (built once, cached by its inputs), a node
netns with a dual-stack podman network, the test guest (and its kernel-boot image),
``manifest`` (what ``virt-launcher manifest`` prints for a spec) and ``pods`` to run
those Kubernetes objects (a ConfigMap + Pod list) on that node."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.guest.build import GuestImage, ensure_guest
from testbed.podman import (
    Container,
    Network,
    Node,
    PodStarter,
    ensure_guest_image,
    ensure_image,
    node,
    translate,
)

SUFFIX = os.getpid() % 100000
NODE_NETNS = f"vlc-node-{SUFFIX}"
NETWORK = f"vlc-{SUFFIX}"
SUBNET4, SUBNET6 = "10.89.0.0/24", "fd89::/64"
#: The image references the specs and manifests name; ``pods`` maps them to local images.
LAUNCHER_IMAGE = "registry.example/virt-launcher:test"
GUEST_IMAGE = "registry.example/vl-test-guest:1"
#: ``virt-launcher manifest`` options for this node, as its admin would give them
#: (docs/deploy.md): a device the node lacks is one its device plugin would not offer.
#: This machine has no /dev/vhost-net; a node without /dev/kvm runs QEMU under TCG.
NODE_MANIFEST_ARGS = (
    *(() if os.path.exists("/dev/vhost-net") else ("--vhost-net-resource", "none")),
    *(() if os.path.exists("/dev/kvm") else ("--accel", "tcg")),
)

Manifest = Callable[..., list[dict[str, Any]]]


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


@pytest.fixture(scope="session")
def guest_image(guest: GuestImage) -> str:
    """The test guest as a kernel-boot image (``FROM scratch``: kernel and initrd)."""
    return ensure_guest_image(guest)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    """``manifest(spec_text, *args)``: the objects ``virt-launcher manifest --spec F --image
    LAUNCHER_IMAGE *NODE_MANIFEST_ARGS *args`` prints — the real command, in a process."""

    def run(spec_text: str, *args: str) -> list[dict[str, Any]]:
        path = tmp_path / "vm.yaml"
        path.write_text(spec_text)
        done = subprocess.run(
            [sys.executable, "-m", "launcher", "manifest", "--spec", str(path),
             "--image", LAUNCHER_IMAGE, *NODE_MANIFEST_ARGS, *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return run


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Where a test's pod volumes and logs live on the node."""
    return tmp_path


@pytest.fixture
def pods(
    cluster: tuple[Node, Network], image: str, guest_image: str, files: Path
) -> Iterator[PodStarter]:
    """``pods(objects, images=None)`` translates the objects' Pod (its container's image →
    the built tag; LAUNCHER_IMAGE and GUEST_IMAGE → the local images, and ``images`` maps
    other references), starts it on the cluster network and returns the Container; all
    are removed afterwards."""
    the_node, network = cluster
    started: list[Container] = []
    local = {LAUNCHER_IMAGE: image, GUEST_IMAGE: guest_image}

    def start(objects: list[dict[str, Any]], images: Mapping[str, str] | None = None) -> Container:
        spec = translate(
            objects, files / f"pod-{len(started)}", image=image,
            images={**local, **(images or {})}, network=network.name,
            name_prefix=f"vlc-{SUFFIX}-",
        )  # fmt: skip
        container = the_node.start(spec, files / "logs")
        started.append(container)
        return container

    try:
        yield start
    finally:
        for container in started:
            container.remove()

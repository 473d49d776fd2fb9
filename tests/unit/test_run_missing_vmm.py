"""A missing cloud-hypervisor binary is exit 4 naming it, before the pod is touched
(an image built from Debian's packages has only QEMU: docs/image.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.errors import HypervisorError
from launcher.options import RunOptions
from launcher.run import run_async

VIRTINK = """\
apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata: {name: v, namespace: t}
spec:
  instance:
    memory: {size: 256Mi}
    kernel: {image: registry.example/k:1, cmdline: console=ttyS0}
    interfaces: [{name: pod, bridge: {}}]
  networks: [{name: pod, pod: {}}]
"""


class NoAgent:
    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pod was touched")

    async def close(self) -> None:
        pass


async def test_virtink_spec_without_the_binary_exits_4_before_the_network(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "vm.yaml"
    spec.write_text(VIRTINK)
    volumes = tmp_path / "volumes"
    (volumes / "kernel").mkdir(parents=True)
    (volumes / "kernel" / "vmlinux").write_bytes(b"\0")
    options = RunOptions(
        spec_path=spec,
        volumes_dir=volumes,
        state_dir=tmp_path / "state",
        termination_log=None,
        cloud_hypervisor_binary="vl-no-such-cloud-hypervisor",
    )
    with pytest.raises(HypervisorError) as caught:
        await run_async(options, agent=NoAgent())  # type: ignore[arg-type]
    assert caught.value.exit_code == 4
    message = str(caught.value)
    assert "'vl-no-such-cloud-hypervisor'" in message
    assert "--hypervisor qemu" in message

"""``run --pod-interface`` is checked before the netlink child is asked anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher import run as run_module
from launcher.errors import UsageError
from launcher.run import RunContext, RunOptions


class NoAgent:
    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pod was touched")


@pytest.mark.parametrize("name", ["", "a/b", "has space", "sixteen-chars-xx"])
async def test_a_name_linux_cannot_have_is_a_usage_error(tmp_path: Path, name: str) -> None:
    ctx = RunContext(RunOptions(spec_path=tmp_path / "vm.yaml", pod_interface=name))
    with pytest.raises(UsageError, match="is not a Linux interface name"):
        await run_module._network(ctx, None, None, NoAgent(), "qemu")  # type: ignore[arg-type]

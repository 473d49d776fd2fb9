"""``run --pod-interface`` is checked before the netlink child is asked anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.errors import UsageError
from launcher.options import RunOptions
from launcher.run import run_async


class NoAgent:
    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pod was touched")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("name", ["", "a/b", "has space", "sixteen-chars-xx"])
async def test_a_name_linux_cannot_have_is_a_usage_error(tmp_path: Path, name: str) -> None:
    options = RunOptions(spec_path=tmp_path / "vm.yaml", pod_interface=name)
    with pytest.raises(UsageError, match="is not a Linux interface name"):
        options.check()
    with pytest.raises(UsageError, match="is not a Linux interface name"):
        await run_async(options, agent=NoAgent())  # type: ignore[arg-type]

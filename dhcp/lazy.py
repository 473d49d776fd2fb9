"""Lazy package exports for ``dhcp``, ``dhcp.v4`` and ``dhcp.v6``.

Each of those packages sets ``__getattr__ = lazy_exports(__name__, {...})``: a name is
imported from its module on first use, so a caller that needs only a configuration type
(the launcher's network plan) does not import the servers and asyncio with it. The
launcher has the same helper (``launcher.startup.lazy_exports``); this copy is on purpose,
since ``dhcp`` stands alone and imports nothing from ``launcher``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``where[name]`` (relative to ``package`` when it
    starts with a dot) on first use of ``name``, and caching the value in the package."""
    table = dict(where)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__

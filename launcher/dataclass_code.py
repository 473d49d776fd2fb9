"""The code ``@dataclass`` compiles for the launcher's classes, compiled once at install.

Called by the console script (:mod:`launcher.entry`: :func:`enable` first thing in the
launcher and in its netlink child), by ``virt-launcher run`` (:func:`disable` once the
VM runs) and at install time (``python -m launcher.dataclass_code``: scripts/install.sh
and the image's Dockerfile).

``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__``… as Python source and compiles it with ``exec`` while the class is being
defined. The launcher's models are ≈150 frozen dataclasses, and compiling their methods
was ≈45 % of what ``virt-launcher run`` imports before the VMM spawn: 58 of 133 ms in the
launcher, 41 of 87 ms in the netlink child (Python 3.11, the project's 2-core VM). The
source dataclasses writes depends only on the class's fields and options, so the code
compiled from it can be kept:

* :func:`build` imports every module of ``launcher``, ``hypervisor`` and ``dhcp`` with a
  recording ``exec`` and writes each source text with its compiled code to
  ``launcher/__pycache__/dataclass-code.<cache tag>.bin``: the interpreter's bytecode
  magic number, then a :mod:`marshal` dict (the format of ``.pyc`` files, written and read
  by the same interpreter, in the same trusted place as the package's ``.pyc`` files);
* :func:`enable` loads that file and gives the ``dataclasses`` module its own ``exec``
  (a module global shadows the builtin): a text found in the cache runs its stored code,
  any other text is compiled as before. The code is exactly what ``exec`` would compile
  from the text (the same interpreter, ``dont_inherit`` like the flag-free
  ``dataclasses`` module), so a class is the same with or without the cache; a missing,
  unreadable or other-interpreter file, or a text not in it (a model edited after the
  build), only costs the compile it would have cost anyway.

Measured (bench/README.md, *Launcher*): the launcher's start-up imports 117 → 73 ms.
No library does this (Python 3.13 compiles one text per class instead of one per method,
which halves the cost; the pod image runs Debian 12's Python 3.11). Imports only the
standard library.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import importlib.util
import marshal
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["enable", "disable", "stats", "build", "cache_path", "CacheStats", "main"]

#: The packages whose every module :func:`build` imports.
PACKAGES = ("launcher", "hypervisor", "dhcp")

_Exec = Callable[..., None]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the cache did in this process: ``entries`` loaded, texts found and compiled."""

    entries: int
    hits: int
    compiled: int


class _State:
    cache: dict[str, types.CodeType] | None = None
    hits = 0
    compiled = 0


def cache_path(package_dir: Path | None = None) -> Path:
    """The cache file for this interpreter (beside the launcher package's ``.pyc`` files)."""
    base = Path(__file__).resolve().parent if package_dir is None else package_dir
    return base / "__pycache__" / f"dataclass-code.{sys.implementation.cache_tag}.bin"


def _read(path: Path) -> dict[str, types.CodeType] | None:
    """The cache at ``path``, or None when it is missing, damaged or another Python's."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    magic = importlib.util.MAGIC_NUMBER
    if not data.startswith(magic):
        return None
    try:
        table = marshal.loads(data[len(magic) :])  # noqa: S302 - our install's file, as a .pyc
    except (EOFError, ValueError, TypeError):
        return None
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, types.CodeType) for k, v in table.items()
    ):
        return None
    return table


def _compile(text: str) -> types.CodeType:
    # dont_inherit: the flags exec() inherits from dataclasses.py, which has none
    return compile(text, "<string>", "exec", dont_inherit=True)


def _exec(source: Any, globals_: dict[str, Any] | None = None, locals_: Any = None) -> None:
    """``exec`` for the dataclasses module: a cached text runs its stored code."""
    cache = _State.cache
    if cache is not None and isinstance(source, str):
        code = cache.get(source)
        if code is None:
            code = _compile(source)
            _State.compiled += 1
        else:
            _State.hits += 1
        source = code
    builtins.exec(source, globals_, locals_)  # noqa: S102 - what dataclasses does itself


def enable(path: Path | None = None) -> bool:
    """Load the cache and use it for every dataclass defined from now on in this
    process; False (nothing changed) when there is no usable cache file."""
    table = _read(cache_path() if path is None else path)
    if table is None:
        return False
    _State.cache = table
    dataclasses.exec = _exec  # type: ignore[attr-defined]  # shadows the builtin there
    return True


def disable() -> None:
    """Stop using the cache and let its unused entries go (the VM runs: the start-up
    imports are done; a module imported later compiles its dataclasses as before)."""
    _State.cache = None
    if getattr(dataclasses, "exec", None) is _exec:
        del dataclasses.exec  # type: ignore[attr-defined]


def stats() -> CacheStats:
    """The cache's use in this process so far."""
    cache = _State.cache
    return CacheStats(len(cache) if cache is not None else 0, _State.hits, _State.compiled)


def _module_names(packages: Iterable[str]) -> list[str]:
    import pkgutil  # noqa: PLC0415 - startup: dataclass code (only the build walks packages)

    names: list[str] = []
    for package in packages:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return names


def build(path: Path | None = None, packages: Iterable[str] = PACKAGES) -> Mapping[str, int]:
    """Import every module of ``packages`` in this (fresh) interpreter, recording what
    dataclasses compiles, and write the cache to ``path``. Returns counts for the log."""
    recorded: dict[str, types.CodeType] = {}

    def record(source: Any, globals_: dict[str, Any] | None = None, locals_: Any = None) -> None:
        if isinstance(source, str):
            code = recorded.get(source)
            if code is None:
                code = recorded[source] = _compile(source)
            source = code
        builtins.exec(source, globals_, locals_)  # noqa: S102 - what dataclasses does itself

    disable()
    dataclasses.exec = record  # type: ignore[attr-defined]
    try:
        modules = _module_names(packages)
        for name in modules:
            importlib.import_module(name)
    finally:
        del dataclasses.exec  # type: ignore[attr-defined]
    target = cache_path() if path is None else path
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    temporary.write_bytes(importlib.util.MAGIC_NUMBER + marshal.dumps(recorded))
    temporary.replace(target)
    return {"modules": len(modules), "texts": len(recorded), "bytes": target.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher.dataclass_code [PATH]``: build the cache (install time)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else None
    counts = build(path)
    where = cache_path() if path is None else path
    print(
        f"dataclass code cache: {counts['texts']} texts from {counts['modules']} modules, "
        f"{counts['bytes']} bytes -> {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

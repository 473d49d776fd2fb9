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
  magic number, the length of an index, the index (a :mod:`marshal` dict from (text
  length, CRC-32 of the text) to where its entry is), then the entries (the text, then
  its code marshalled: the format of ``.pyc`` files, written and read by the same
  interpreter, in the same trusted place as the package's ``.pyc`` files);
* :func:`enable` maps that file read-only (its pages are the page cache's, shared by
  every launcher on the node), reads the index and gives the ``dataclasses`` module its
  own ``exec`` (a module global shadows the builtin): a text whose entry holds that very
  text runs the entry's code, any other text is compiled as before. Only the entries
  used are unmarshalled. The code is exactly what ``exec`` would compile from the text
  (the same interpreter, ``dont_inherit`` like the flag-free ``dataclasses`` module), so
  a class is the same with or without the cache; a missing, unreadable or
  other-interpreter file, or a text not in it (a model edited after the build), only
  costs the compile it would have cost anyway.

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
import mmap
import os
import struct
import sys
import types
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["enable", "disable", "stats", "build", "cache_path", "CacheStats", "main"]

#: The packages whose every module :func:`build` imports.
PACKAGES = ("launcher", "hypervisor", "dhcp")

_LENGTH = struct.Struct("<Q")
_Key = tuple[int, int]  # (length of the UTF-8 text, its CRC-32)
_Entry = tuple[int, int, int]  # (offset of the text in the entries, text bytes, code bytes)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the cache did in this process: ``entries`` in the file, texts found and
    compiled."""

    entries: int
    hits: int
    compiled: int


class _Cache:
    """The mapped file and its index."""

    def __init__(self, mapping: mmap.mmap, index: dict[_Key, _Entry], start: int) -> None:
        self.mapping = mapping
        self.view = memoryview(mapping)
        self.index = index
        self.start = start  # where the entries begin

    def code(self, text: str) -> types.CodeType | None:
        data = text.encode()
        entry = self.index.get((len(data), zlib.crc32(data)))
        if entry is None:
            return None
        offset, text_size, code_size = entry
        at = self.start + offset
        if self.view[at : at + text_size] != data:
            return None  # another text with the same length and CRC: compile this one
        code = marshal.loads(self.view[at + text_size : at + text_size + code_size])  # noqa: S302 - our install's file, as a .pyc
        return code if isinstance(code, types.CodeType) else None

    def close(self) -> None:
        self.view.release()
        self.mapping.close()


class _State:
    cache: _Cache | None = None
    hits = 0
    compiled = 0


def cache_path(package_dir: Path | None = None) -> Path:
    """The cache file for this interpreter (beside the launcher package's ``.pyc`` files)."""
    base = Path(__file__).resolve().parent if package_dir is None else package_dir
    return base / "__pycache__" / f"dataclass-code.{sys.implementation.cache_tag}.bin"


def _open(path: Path) -> _Cache | None:
    """The cache at ``path``, or None when it is missing, damaged or another Python's."""
    try:
        with path.open("rb") as file:
            mapping = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return None
    magic = importlib.util.MAGIC_NUMBER
    head = len(magic) + _LENGTH.size
    try:
        if mapping[: len(magic)] != magic or len(mapping) < head:
            raise ValueError("not this interpreter's")
        (size,) = _LENGTH.unpack(mapping[len(magic) : head])
        index = marshal.loads(mapping[head : head + size])  # noqa: S302 - our install's file
        if not isinstance(index, dict) or not all(
            isinstance(k, tuple)
            and isinstance(v, tuple)
            and len(v) == 3
            and head + size + v[0] + v[1] + v[2] <= len(mapping)
            for k, v in index.items()
        ):
            raise ValueError("not an index")
    except (EOFError, ValueError, TypeError, struct.error):
        mapping.close()
        return None
    return _Cache(mapping, index, head + size)


def _compile(text: str) -> types.CodeType:
    # dont_inherit: the flags exec() inherits from dataclasses.py, which has none
    return compile(text, "<string>", "exec", dont_inherit=True)


def _exec(source: Any, globals_: dict[str, Any] | None = None, locals_: Any = None) -> None:
    """``exec`` for the dataclasses module: a cached text runs its stored code."""
    cache = _State.cache
    if cache is not None and isinstance(source, str):
        code = cache.code(source)
        if code is None:
            code = _compile(source)
            _State.compiled += 1
        else:
            _State.hits += 1
        source = code
    builtins.exec(source, globals_, locals_)  # noqa: S102 - what dataclasses does itself


def enable(path: Path | None = None) -> bool:
    """Map the cache and use it for every dataclass defined from now on in this
    process; False (nothing changed) when there is no usable cache file."""
    cache = _open(cache_path() if path is None else path)
    if cache is None:
        return False
    disable()
    _State.cache = cache
    dataclasses.exec = _exec  # type: ignore[attr-defined]  # shadows the builtin there
    return True


def disable() -> None:
    """Stop using the cache and unmap it (the VM runs: the start-up imports are done; a
    module imported later compiles its dataclasses as before)."""
    cache, _State.cache = _State.cache, None
    if cache is not None:
        cache.close()
    if getattr(dataclasses, "exec", None) is _exec:
        del dataclasses.exec  # type: ignore[attr-defined]


def stats() -> CacheStats:
    """The cache's use in this process so far."""
    cache = _State.cache
    return CacheStats(len(cache.index) if cache is not None else 0, _State.hits, _State.compiled)


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


def _layout(recorded: Mapping[str, types.CodeType]) -> bytes:
    """The file's bytes for ``recorded`` (see the module docstring)."""
    index: dict[_Key, _Entry] = {}
    entries = bytearray()
    for text, code in recorded.items():
        data = text.encode()
        key = (len(data), zlib.crc32(data))
        if key in index:
            continue  # a collision: the second text is compiled at run time
        blob = marshal.dumps(code)
        index[key] = (len(entries), len(data), len(blob))
        entries += data + blob
    table = marshal.dumps(index)
    return importlib.util.MAGIC_NUMBER + _LENGTH.pack(len(table)) + table + bytes(entries)


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
        builtins.exec(source, globals_, locals_)  # noqa: S102 - the same

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
    temporary.write_bytes(_layout(recorded))
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

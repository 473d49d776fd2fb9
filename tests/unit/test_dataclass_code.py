"""launcher.dataclass_code: a class made with the cache is the class made without it; a
bad or foreign cache file changes nothing; the build covers the run's start-up path.

Each case runs in a fresh interpreter: the cache acts while a class is being defined,
and this test process has defined the launcher's classes long ago."""

from __future__ import annotations

import importlib.util
import json
import marshal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from launcher import dataclass_code

#: A module whose classes cover what @dataclass generates: frozen + slots, defaults,
#: default factories, a ClassVar, a field excluded from compare/repr, order, kw_only.
MODELS = """
from __future__ import annotations
import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar

@dataclass(frozen=True, slots=True)
class Nic:
    name: str
    mtu: int = 1500
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()
    tags: frozenset[str] = field(default_factory=frozenset)
    note: str = field(default="", compare=False, repr=False)
    KIND: ClassVar[str] = "nic"

@dataclass(order=True)
class Port:
    number: int
    protocol: str = "tcp"

@dataclass(frozen=True, kw_only=True)
class Options:
    level: str = "info"
"""

#: Describes the classes of MODELS as JSON (what a caller could observe).
DESCRIBE = """
import dataclasses, inspect, json, sys
sys.path.insert(0, sys.argv[1])
{prelude}
import models
n = models.Nic("eth0", addresses=())
out = {{
    "repr": [repr(n), repr(models.Port(80)), repr(models.Options())],
    "eq": [n == models.Nic("eth0", note="x"), n == models.Nic("eth1")],
    "hash": hash(n) == hash(models.Nic("eth0", note="y")),
    "order": models.Port(1) < models.Port(2),
    "fields": [f.name for f in dataclasses.fields(models.Nic)],
    "init": str(inspect.signature(models.Nic.__init__)),
    "annotations": repr(models.Nic.__init__.__annotations__),
    "kw": str(inspect.signature(models.Options)),
    "slots": models.Nic.__slots__,
    "code": models.Nic.__init__.__code__.co_filename,
}}
try:
    n.mtu = 9000
except dataclasses.FrozenInstanceError as err:
    out["frozen"] = str(err)
{epilogue}
print(json.dumps(out))
"""


def _describe(tmp_path: Path, prelude: str = "", epilogue: str = "") -> dict[str, object]:
    (tmp_path / "models.py").write_text(MODELS)
    code = DESCRIBE.format(prelude=prelude, epilogue=epilogue)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _build(tmp_path: Path, cache: Path) -> None:
    """A cache recorded from MODELS (the build's recorder, on a package of one module)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(MODELS)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from pathlib import Path
        from launcher import dataclass_code
        print(dataclass_code.build(Path({str(cache)!r}), packages=("pkg",))["texts"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10  # every generated method of the three classes


ENABLE = """
from pathlib import Path
from launcher import dataclass_code
enabled = dataclass_code.enable(Path({path!r}))
"""
STATS = """
s = dataclass_code.stats()
out["cache"] = [enabled, s.hits, s.compiled]
"""


def test_a_class_made_from_the_cache_is_the_class_made_without_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache.bin"
    _build(tmp_path, cache)
    plain = _describe(tmp_path)
    cached = _describe(tmp_path, ENABLE.format(path=str(cache)), STATS)
    enabled, hits, compiled = cached.pop("cache")  # type: ignore[misc]
    assert enabled is True and compiled == 0 and hits > 10
    assert cached == plain
    # compiled without inheriting `from __future__ import annotations` (which would turn
    # the generated `-> _return_type` into the string '_return_type')
    assert "'return': None" in str(cached["annotations"])
    assert "_return_type" not in str(cached["annotations"])


def test_a_text_missing_from_the_cache_is_compiled_as_before(tmp_path: Path) -> None:
    cache = tmp_path / "cache.bin"
    cache.write_bytes(dataclass_code._layout({"x = 1": compile("x = 1", "<s>", "exec")}))
    plain = _describe(tmp_path)
    cached = _describe(tmp_path, ENABLE.format(path=str(cache)), STATS)
    enabled, hits, compiled = cached.pop("cache")  # type: ignore[misc]
    assert enabled is True and hits == 0 and compiled > 10
    assert cached == plain


def test_an_entry_holding_another_text_is_not_used(tmp_path: Path) -> None:
    """Two texts with the same length and CRC-32 would share an index key: the entry's
    own text is compared before its code runs."""
    cache = tmp_path / "cache.bin"
    _build(tmp_path, cache)
    data = bytearray(cache.read_bytes())
    cut = len(importlib.util.MAGIC_NUMBER)
    (size,) = struct.unpack("<Q", data[cut : cut + 8])
    start = cut + 8 + size
    # flip one byte inside every stored text (each entry starts with its text)
    index = marshal.loads(bytes(data[cut + 8 : start]))  # noqa: S302 - the file just built
    for offset, _, _ in index.values():
        data[start + offset] ^= 0x20
    cache.write_bytes(bytes(data))
    plain = _describe(tmp_path)
    cached = _describe(tmp_path, ENABLE.format(path=str(cache)), STATS)
    enabled, hits, compiled = cached.pop("cache")  # type: ignore[misc]
    assert enabled is True and hits == 0 and compiled > 10
    assert cached == plain


def test_a_bad_or_foreign_cache_is_not_used(tmp_path: Path) -> None:
    good = dataclass_code._layout({"pass": compile("pass", "<string>", "exec")})
    magic = importlib.util.MAGIC_NUMBER
    index_size = struct.unpack("<Q", good[len(magic) : len(magic) + 8])[0]
    files = {
        "missing": None,
        "empty": b"",
        "other-python": b"\x00\x00\r\n" + good[len(magic) :],
        "short": magic + b"\x01",
        "index-past-the-end": magic + struct.pack("<Q", 1 << 40) + good[len(magic) + 8 :],
        "entries-cut": good[: len(magic) + 8 + index_size + 2],
        "not-an-index": magic + struct.pack("<Q", len(marshal.dumps(["x"]))) + marshal.dumps(["x"]),
    }
    for name, data in files.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        probe = ENABLE.format(path=str(path)) + textwrap.dedent(
            """
            import dataclasses
            print(enabled, hasattr(dataclasses, "exec"))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["False", "False"], name


def test_disable_gives_dataclasses_its_builtin_exec_back() -> None:
    probe = textwrap.dedent(
        f"""
        import dataclasses
        from pathlib import Path
        from launcher import dataclass_code
        print(dataclass_code.enable(Path({str(dataclass_code.cache_path())!r})))
        print(hasattr(dataclasses, "exec"))
        dataclass_code.disable()
        print(hasattr(dataclasses, "exec"), dataclass_code.stats().entries)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "False", "0"]


def test_the_installed_cache_covers_the_run_start_up_path() -> None:
    """scripts/install.sh (and the image) build it; everything `virt-launcher run`
    imports up to the VMM spawn then defines its dataclasses without a compile."""
    assert dataclass_code.cache_path().is_file(), "run: python -m launcher.dataclass_code"
    probe = textwrap.dedent(
        """
        from launcher import dataclass_code
        assert dataclass_code.enable()
        import launcher.cli, launcher.run, launcher.netchild, launcher.network
        import dhcp.v4.server, dhcp.v6.server, dhcp.ra, hypervisor.qemu
        s = dataclass_code.stats()
        print(s.hits, s.compiled)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    hits, compiled = map(int, done.stdout.split())
    assert hits > 300
    assert compiled == 0, "a model changed since the install: python -m launcher.dataclass_code"

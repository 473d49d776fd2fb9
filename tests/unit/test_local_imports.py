"""Every deferred import in the launcher says why (launcher/startup.py's docstring).

A ``# noqa: PLC0415`` (an import inside a function) must be followed by its reason: the
start-up row it belongs to (``- startup: <row>``) or the import cycle it breaks.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
NOQA = re.compile(r"#\s*noqa:\s*PLC0415\b(?P<rest>.*)$")
EXEMPT: set[str] = set()


def unexplained(root: Path = ROOT) -> list[str]:
    out = []
    for package in ("launcher", "hypervisor", "dhcp"):
        for path in sorted((root / package).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            if name in EXEMPT:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                match = NOQA.search(line)
                if match and not match["rest"].strip().startswith("- "):
                    out.append(f"{name}:{number}: {line.strip()}")
    return out


def test_every_local_import_names_its_reason() -> None:
    assert unexplained() == []


def test_the_check_sees_a_bare_noqa(tmp_path: Path) -> None:
    (tmp_path / "launcher").mkdir()
    (tmp_path / "launcher" / "m.py").write_text(
        "def f():\n"
        "    import asyncio  # noqa: PLC0415\n"
        "    import json  # noqa: PLC0415 - startup: CLI light\n"
    )
    assert unexplained(tmp_path) == ["launcher/m.py:2: import asyncio  # noqa: PLC0415"]

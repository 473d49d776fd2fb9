"""The dependencies follow the data flow (docs/architecture.md), checked on the source.

* ``dhcp`` stands alone: it imports nothing from ``launcher`` or ``hypervisor``;
* ``hypervisor`` imports nothing from ``launcher`` (nor ``dhcp``);
* ``bench`` imports the shared test bed (``testbed``), never ``tests``;
* ``testbed`` never imports ``tests``.

Every import statement counts, also one inside a function (``ast`` walks them all).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def imported_packages(path: Path) -> set[str]:
    """Top-level package names ``path`` imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def offenders(package: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) & forbidden
        if bad:
            out.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("dhcp", {"launcher", "hypervisor", "tests", "testbed"}),
        ("hypervisor", {"launcher", "dhcp", "tests", "testbed"}),
        ("launcher", {"tests", "testbed"}),
        ("bench", {"tests"}),
        ("testbed", {"tests"}),
    ],
)
def test_no_import_against_the_flow(package: str, forbidden: set[str]) -> None:
    assert offenders(package, forbidden) == []


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from launcher.errors import X\n    import hypervisor.base\n")
    assert imported_packages(sample) == {"launcher", "hypervisor"}


def test_one_pyroute2_adapter() -> None:
    """Only launcher/network/netlink.py talks to pyroute2 (the one netlink adapter)."""
    users = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.glob("launcher/**/*.py"))
        if "pyroute2" in imported_packages(path)
    ]
    assert users == ["launcher/network/netlink.py"]


def test_no_task_lookup_by_name() -> None:
    """Tasks are owned (the run's TaskGroup, the NIC owners), never found again by name."""
    found = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.glob("launcher/**/*.py"))
        if "all_tasks" in path.read_text()
    ]
    assert found == []

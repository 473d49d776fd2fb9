"""scripts/install.sh byte-compiles the packages after a successful install.

The README's test command runs install.sh before pytest, so by now every module of the
three packages has a current ``.pyc`` (PYTHONDONTWRITEBYTECODE is set on some machines:
then nothing but install.sh writes them, and every launcher start would compile ~90
modules again).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_module_has_a_current_pyc() -> None:
    stale = []
    for package in ("launcher", "hypervisor", "dhcp"):
        for source in (ROOT / package).rglob("*.py"):
            cached = Path(importlib.util.cache_from_source(str(source)))
            if not cached.exists() or cached.stat().st_mtime < source.stat().st_mtime:
                stale.append(str(source.relative_to(ROOT)))
    assert not stale, f"install.sh left these without a current .pyc: {stale[:5]}"


def test_compileall_runs_after_a_successful_pip_install() -> None:
    lines = (ROOT / "scripts/install.sh").read_text().splitlines()
    compile_at = next(i for i, line in enumerate(lines) if "compileall" in line)
    pip_at = next(i for i, line in enumerate(lines) if "pip install -q -e" in line)
    block_end = next(i for i in range(pip_at, len(lines)) if lines[i].strip() == "fi")
    assert compile_at > block_end, "compileall sits inside the pip-failure branch"

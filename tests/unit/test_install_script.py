"""scripts/install.sh byte-compiles the packages after a successful install.

PYTHONDONTWRITEBYTECODE is set on some machines: then nothing but install.sh writes the
``.pyc`` files, and every launcher start would compile ~90 modules again. The compile
step once sat inside the pip-failure branch, where it never ran.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_compileall_runs_after_a_successful_pip_install() -> None:
    lines = (ROOT / "scripts/install.sh").read_text().splitlines()
    compile_at = next(i for i, line in enumerate(lines) if "compileall" in line)
    pip_at = next(i for i, line in enumerate(lines) if "pip install -q -e" in line)
    block_end = next(i for i in range(pip_at, len(lines)) if lines[i].strip() == "fi")
    assert compile_at > block_end, "compileall sits inside the pip-failure branch"

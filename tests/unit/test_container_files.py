"""Dockerfile and entrypoint.sh: linted (hadolint, shellcheck) and checked for what they promise.

No Docker engine runs here, so the image is not built; instead the linters must be
present and silent, the Dockerfile's instructions are checked against the issue's
contract (base, packages, venv, bytecode, exec-form ENTRYPOINT, COPY sources that
exist), and entrypoint.sh is executed with a stand-in ``virt-launcher`` on PATH to
check it passes arguments through, defaults to ``run`` and execs (same PID).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "entrypoint.sh"


def _tool(name: str) -> str:
    venv = ROOT / ".venv/bin" / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: run scripts/install.sh")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_shellcheck_clean() -> None:
    proc = subprocess.run(
        [_tool("shellcheck"), "--shell=sh", "--severity=style", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_dockerfile_contract() -> None:
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert froms
    assert all(f.split()[0] == "debian:bookworm-slim" for f in froms)
    runs = " ".join(args for word, args in steps if word == "RUN")
    installed = set()
    for cmd in runs.split("&&"):
        words = shlex.split(cmd)
        if words[:2] == ["apt-get", "install"]:
            installed |= {w for w in words[2:] if not w.startswith("-")}
    assert {"python3", "python3-venv", "qemu-system-x86", "nftables", "iproute2"} <= installed
    assert "python3 -m venv /opt/virt-launcher" in runs
    assert "-m compileall" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["/entrypoint.sh"]  # exec form: no sh -c in between
    assert 'PATH="/opt/virt-launcher/bin:${PATH}"' in " ".join(a for w, a in steps if w == "ENV")


def test_dockerfile_copies_what_exists() -> None:
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def test_entrypoint_is_executable() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


def _run_entrypoint(tmp_path: Path, *args: str) -> tuple[int, list[str], int]:
    """Run entrypoint.sh with a stand-in virt-launcher that reports its PID and argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    stub = bindir / "virt-launcher"
    stub.write_text('#!/bin/sh\necho "$$"\nfor a in "$@"; do echo "arg:$a"; done\nexit 7\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    proc = subprocess.Popen([str(ENTRYPOINT), *args], stdout=subprocess.PIPE, text=True, env=env)
    out, _ = proc.communicate(timeout=30)
    pid, *lines = out.splitlines()
    assert int(pid) == proc.pid, "entrypoint.sh must exec the launcher, not fork it"
    return proc.returncode, lines, int(pid)


def test_entrypoint_defaults_to_run(tmp_path: Path) -> None:
    code, lines, _ = _run_entrypoint(tmp_path)
    assert (code, lines) == (7, ["arg:run"])


def test_entrypoint_passes_arguments_through(tmp_path: Path) -> None:
    code, lines, _ = _run_entrypoint(tmp_path, "validate", "--spec", "/a b.yaml", "")
    assert (code, lines) == (7, ["arg:validate", "arg:--spec", "arg:/a b.yaml", "arg:"])

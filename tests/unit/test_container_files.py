"""Dockerfile, .dockerignore and entrypoint.sh: linted (hadolint, shellcheck) and checked.

The image itself is built and run by tests/container/ (podman); here, in a second, the
linters must be present and silent, the Dockerfile's instructions are checked against
the contract (docs/image.md: Debian slim base, QEMU + nftables + iproute2 without
recommends, the VMM user uid/gid 107 made before any package, Python packages only from
the wheels scripts/image.sh builds on the host — no index, no TLS shortcut —, bytecode,
the state dir, exec-form ENTRYPOINT, COPY sources that exist or that image.sh makes and
that .dockerignore lets in), and entrypoint.sh is executed with a stand-in
``virt-launcher`` on PATH to check it passes arguments through, defaults to ``run`` and
execs (same PID).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "entrypoint.sh"
DOCKERIGNORE = ROOT / ".dockerignore"
WHEELS = "build/wheels"  # made by scripts/image.sh before the build


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


def test_docs_cloud_hypervisor_snippet_is_hadolint_clean_and_pinned(tmp_path: Path) -> None:
    """docs/image.md's stage adding a cloud-hypervisor release: linted, version and
    checksum pinned, the checksum checked before the binary is made executable."""
    text = (ROOT / "docs/image.md").read_text()
    blocks = re.findall(r"```dockerfile\n(.*?)```", text, flags=re.S)
    stage = next(b for b in blocks if "AS cloud-hypervisor" in b)
    snippet = tmp_path / "Dockerfile"
    snippet.write_text(stage)
    proc = subprocess.run(
        [_tool("hadolint"), "--no-color", str(snippet)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    assert "ARG CLOUD_HYPERVISOR_VERSION=v" in stage
    assert 'test -n "${CLOUD_HYPERVISOR_SHA256}"' in stage
    assert stage.index("sha256sum -c") < stage.index("chmod 0755")
    assert any("COPY --from=cloud-hypervisor" in b for b in blocks)


def test_shellcheck_clean() -> None:
    proc = subprocess.run(
        [_tool("shellcheck"), "--shell=sh", "--severity=style", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def stages() -> list[tuple[str, str | None, list[tuple[str, str]]]]:
    """(base, stage name or None, instructions) per FROM."""
    out: list[tuple[str, str | None, list[tuple[str, str]]]] = []
    for word, args in instructions():
        if word == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append((words[0], name, []))
        else:
            assert out, f"{word} before the first FROM"
            out[-1][2].append((word, args))
    return out


def commands(runs: str) -> list[list[str]]:
    """The simple commands of RUN lines (split at &&), as argv lists."""
    return [shlex.split(cmd) for cmd in runs.split("&&") if cmd.strip()]


def test_dockerfile_contract() -> None:
    all_stages = stages()
    names = {name for _, name, _ in all_stages if name}
    # Every stage is Debian slim or an earlier stage of this file.
    assert all_stages[0][0] == "debian:bookworm-slim"
    assert all(base == "debian:bookworm-slim" or base in names for base, _, _ in all_stages)
    steps = instructions()
    runs = " && ".join(args for word, args in steps if word == "RUN")
    installed: set[str] = set()
    for words in commands(runs):
        if words[:2] == ["apt-get", "install"]:
            assert "--no-install-recommends" in words, words
            installed |= {w for w in words[2:] if not w.startswith("-")}
    assert {"python3", "qemu-system-x86", "nftables", "iproute2", "busybox-static"} <= installed
    assert "rm -rf /var/lib/apt/lists/*" in runs
    # The VMM user (KubeVirt's qemu, uid/gid 107), created before any package can take 107.
    user_at = runs.index("useradd")
    assert runs.index("groupadd --system --gid 107 qemu") < user_at < runs.index("apt-get install")
    assert "--uid 107 --gid qemu" in runs[user_at:]
    # Python packages: only the wheels built on the host, nothing from an index.
    assert "python3 -m venv --without-pip /opt/virt-launcher" in runs
    pip = [w for w in commands(runs) if "install" in w and any(x.endswith("/pip") for x in w)]
    assert len(pip) == 1
    assert {"--no-index", "--find-links", "/wheels"} <= set(pip[0])
    for weakened in ("--trusted-host", "--index-url", "--extra-index-url", "--cert", "http"):
        assert weakened not in runs, f"{weakened} in a RUN line"
    assert "-m compileall" in runs
    # The state dir (an emptyDir in the pod) exists as a mount point in the read-only root.
    assert "install -d -m 0755 /run/virt-launcher" in runs
    final = all_stages[-1][2]
    assert not any(word == "USER" for word, _ in final)  # starts as root, drops later
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["/entrypoint.sh"]  # exec form: no sh -c in between
    env = " ".join(a for w, a in final if w == "ENV")
    assert 'PATH="/opt/virt-launcher/bin:${PATH}"' in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the root file system is read-only
    assert ("COPY", "--from=venv /opt/virt-launcher /opt/virt-launcher") in final


def test_dockerfile_copies_what_exists_or_image_sh_makes() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # an allow-list: nothing else (.venv, .git) enters the context
    allowed = [p[1:] for p in patterns[1:] if p.startswith("!")]
    image_sh = (ROOT / "scripts/image.sh").read_text()
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            if source == WHEELS:
                assert f"WHEELS={WHEELS}" in image_sh
                assert f"{WHEELS}/*.whl" in allowed
            else:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                assert source in allowed, f"COPY source {source} is not let in by .dockerignore"


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

"""The virt-launcher command line: exit codes, stdout/stderr lines, env and defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.cli import DEFAULT_SPEC_PATH, Options, main, parse_args

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
DATA = ROOT / "tests/unit/spec/data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "--spec", str(EXAMPLES / "kubevirt-dpdk.yaml"))
    assert code == 0
    assert out == (
        "ok: kubevirt-vm default/rhel-dpdk-vm: 10 vCPU, 8Gi, 2 interfaces (masquerade, sriov), "
        "2 disks\n"
    )
    assert err == ""


def test_validate_spec_before_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--spec", str(EXAMPLES / "demo-vm.yaml"), "validate")
    assert code == 0
    assert out == "ok: kubevirt-vmi default/demo-vm: 1 vCPU, 256Mi, 1 interface (bridge), 0 disks\n"


def test_validate_invalid_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "--spec", str(DATA / "many-problems.yaml"))
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 5
    assert lines[3] == 'spec.instance.interfaces[1].mac: "zz:11:22:33:44:55" is not a MAC address'
    assert "Traceback" not in err


def test_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "validate", "--spec", str(tmp_path / "x.yaml"))
    assert (code, out) == (2, "")
    assert err == f"{tmp_path}/x.yaml: the spec file does not exist\n"


def test_spec_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRT_LAUNCHER_SPEC", "/from/env.yaml")
    assert parse_args(["validate"]).spec_path == Path("/from/env.yaml")
    assert parse_args(["validate", "--spec", "/cli.yaml"]).spec_path == Path("/cli.yaml")
    assert parse_args(["validate"], environ={}) == Options(
        command="validate", spec_path=DEFAULT_SPEC_PATH, log_level="info"
    )
    assert parse_args(["--log-level", "debug", "plan"], environ={}).log_level == "debug"
    assert parse_args(["plan", "--log-level", "error"], environ={}).log_level == "error"


def test_plan_prints_the_normalized_spec(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(EXAMPLES / "kubevirt-masquerade-ports.yaml")
    code, out, _ = run(capsys, "plan", "--offline", "--spec", example)
    assert code == 2  # the containerDisk is not mounted here (tests/unit/test_volumes.py)
    plan = json.loads(out)
    assert list(plan) == ["spec", "network", "volumes", "hypervisor", "cloud_init", "problems"]
    spec = plan["spec"]
    assert (spec["shape"], spec["name"], spec["memory_bytes"]) == (
        "kubevirt-vm",
        "example-vm",
        1 << 30,
    )
    assert spec["interfaces"][0]["binding"]["ports"] == [
        {"port": 80, "protocol": "TCP", "name": None}
    ]
    assert spec["networks"][0]["source"]["type"] == "pod_network"


def test_plan_shows_the_container_disk_overlay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The containerDisk is read through an overlay in the state dir; plan makes nothing."""
    example = str(EXAMPLES / "kubevirt-masquerade-ports.yaml")
    image = tmp_path / "volumes/containerdisk/fedora.raw"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\0" * 8192)
    state = tmp_path / "state"
    code, out, _ = run(capsys, "plan", "--offline", "--spec", example, "--volumes-dir",
                       str(tmp_path / "volumes"), "--state-dir", str(state))  # fmt: skip
    assert code == 0
    plan = json.loads(out)
    root = plan["volumes"]["disks"][0]["file"]
    assert (root["path"], root["state"], root["format"], root["size_bytes"]) == (
        str(state / "overlay/containerdisk.qcow2"),
        "create",
        "qcow2",
        8192,
    )
    assert (root["backing"]["path"], root["backing"]["state"]) == (str(image), "present")
    argv = plan["hypervisor"]["argv"]
    node = json.loads(argv[argv.index("-blockdev") + 1])
    assert node["file"]["filename"] == str(state / "overlay/containerdisk.qcow2")
    assert node["backing"]["file"] == {"driver": "file", "filename": str(image), "read-only": True}
    assert not (state / "overlay").exists()  # plan changes nothing


def test_plan_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--spec", str(DATA / "unknown-kind.yaml"))
    assert (code, out) == (2, "")
    assert err.startswith('kind: "Pod" is not supported for kubevirt.io/v1')


def test_run_missing_kernel_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log_file = tmp_path / "termination-log"
    code, out, err = run(
        capsys,
        "run",
        "--spec",
        str(EXAMPLES / "demo-vm.yaml"),
        "--volumes-dir",
        str(tmp_path / "volumes"),
        "--state-dir",
        str(tmp_path / "state"),
        "--termination-log",
        str(log_file),
    )
    assert (code, out) == (2, "")
    records = [json.loads(line) for line in err.splitlines()]
    assert records[-1]["level"] == "error"
    assert records[-1]["vm"] == "default/demo-vm"
    assert f"no file at {tmp_path}/volumes/kernel/boot/vmlinuz" in records[-1]["msg"]
    assert "traceback" not in records[-1]
    assert log_file.read_text().strip() == records[-1]["msg"]
    assert not (tmp_path / "state").exists()  # nothing touched before the files were found


def test_run_invalid_spec_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "--spec", str(DATA / "empty.yaml"))
    assert code == 2
    assert err == f"{DATA}/empty.yaml: the spec file is empty\n"


def test_unexpected_error_one_line_traceback_only_at_debug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(options: Options, out: object) -> int:
        raise RuntimeError("kaputt")

    monkeypatch.setattr(cli, "validate", boom)
    code, _, err = run(capsys, "validate", "--spec", "x")
    assert code == 1
    records = [json.loads(line) for line in err.splitlines()]
    assert len(records) == 1
    assert records[0]["msg"] == "unexpected error: RuntimeError: kaputt"
    code, _, err = run(capsys, "--log-level", "debug", "validate", "--spec", "x")
    assert code == 1
    records = [json.loads(line) for line in err.splitlines()]
    assert [r["level"] for r in records] == ["error", "debug"]
    assert 'raise RuntimeError("kaputt")' in records[1]["traceback"]


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["validate", "--log-level", "loud"], ["validate", "--nope"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: virt-launcher" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--help"], ["validate", "--help"], ["plan", "-h"], ["run", "--help"]]
)
def test_help_everywhere(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--spec FILE" in out
    assert "--log-level" in out


def test_python_dash_m_launcher_validate() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher",
            "validate",
            "--spec",
            str(EXAMPLES / "virtink-vdpa.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "ok: virtink default/ubuntu-vdpa: 1 vCPU, 1Gi, 3 interfaces (bridge, vdpa), 2 disks\n"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "launcher", "validate", "--spec", str(DATA / "not-yaml.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "is not valid YAML or JSON" in bad.stderr

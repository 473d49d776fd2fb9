"""launcher.qcow2: the overlay it writes is a qcow2 file QEMU's own tools accept and use.

Checked with the real ``qemu-img`` and ``qemu-io`` (Debian's qemu-utils, installed by
scripts/install.sh): ``info`` reads the backing file, its format and the size; ``check``
finds no error or leak, also after QEMU wrote into it; reads fall through to the
backing image and writes stay in the overlay. ``read_header`` reads qemu-img's own
overlays the same way.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from launcher.qcow2 import CLUSTER, create_overlay, read_header, virtual_size

MIB = 1 << 20
TIB = 1 << 40


def qemu(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.raw"
    path.write_bytes(b"\x55" * (4 * MIB))
    return path


@pytest.mark.parametrize("size", [4 * MIB, 3 << 30, 2 * TIB, 40 * TIB])
def test_qemu_img_reads_and_checks_the_overlay(tmp_path: Path, base: Path, size: int) -> None:
    overlay = tmp_path / "over.qcow2"
    create_overlay(overlay, str(base), "raw", size)
    info = json.loads(qemu("qemu-img", "info", "--output=json", str(overlay)))
    assert info["format"] == "qcow2" and info["virtual-size"] == size
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "raw"
    assert info["cluster-size"] == CLUSTER and info["format-specific"]["data"]["compat"] == "1.1"
    check = json.loads(qemu("qemu-img", "check", "--output=json", str(overlay)))
    assert check["check-errors"] == 0 and "corruptions" not in check and "leaks" not in check
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temp name, renamed


def test_reads_fall_through_and_writes_stay_in_the_overlay(tmp_path: Path, base: Path) -> None:
    overlay = tmp_path / "over.qcow2"
    create_overlay(overlay, str(base), "raw", 4 * MIB)
    base.chmod(0o444)
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0x55 0 4M", str(overlay))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 128k", str(overlay))
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 1M 128k", "-c", "read -P 0x55 0 1M",
         str(overlay))  # fmt: skip
    assert base.read_bytes() == b"\x55" * (4 * MIB)
    check = json.loads(qemu("qemu-img", "check", "--output=json", str(overlay)))
    assert check["check-errors"] == 0 and check["allocated-clusters"] == 2
    assert "corruptions" not in check and "leaks" not in check


def test_a_qcow2_image_can_back_an_overlay(tmp_path: Path, base: Path) -> None:
    middle = tmp_path / "middle.qcow2"
    create_overlay(middle, str(base), "raw", 4 * MIB)
    top = tmp_path / "top.qcow2"
    create_overlay(top, str(middle), "qcow2", virtual_size(middle, "qcow2"))
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0x55 0 4M", str(top))
    chain = json.loads(qemu("qemu-img", "info", "--backing-chain", "--output=json", str(top)))
    assert [i["format"] for i in chain] == ["qcow2", "qcow2", "raw"]


def test_read_header_agrees_with_qemu_img_create(tmp_path: Path, base: Path) -> None:
    made = tmp_path / "made.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(made))
    header = read_header(made)
    assert (header.version, header.size) == (3, 4 * MIB)
    assert (header.backing_file, header.backing_format) == (str(base), "raw")
    plain = tmp_path / "plain.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", str(plain), "1G")
    assert read_header(plain).backing_file is None and virtual_size(plain, "qcow2") == 1 << 30
    assert virtual_size(base, "raw") == 4 * MIB


def test_refusals(tmp_path: Path) -> None:
    target = tmp_path / "x.qcow2"
    with pytest.raises(ValueError, match="backing format 'vmdk' is not one of raw, qcow2"):
        create_overlay(target, "/b", "vmdk", MIB)
    with pytest.raises(ValueError, match="virtual size 0 is not between"):
        create_overlay(target, "/b", "raw", 0)
    with pytest.raises(ValueError, match="is not 1-1023 bytes long"):
        create_overlay(target, "/" + "b" * 1100, "raw", MIB)
    assert not target.exists()
    (tmp_path / "raw").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="is not a qcow2 image"):
        read_header(tmp_path / "raw")

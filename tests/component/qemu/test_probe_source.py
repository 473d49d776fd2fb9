"""The probe firmware bytes embedded in hypervisor/qemu/probe.py are probe_bios.S, assembled.

Uses binutils (``as``/``ld``, installed with gcc by scripts/install.sh); then boots the
image under TCG and checks it reaches isa-debug-exit (status 85).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from hypervisor.qemu import probe

pytestmark = pytest.mark.timeout(60)

SOURCE = Path(probe.__file__).with_name("probe_bios.S")


def test_embedded_bytes_match_the_assembly_source(tmp_path: Path) -> None:
    obj, binary = tmp_path / "p.o", tmp_path / "p.bin"
    subprocess.run(["as", "--64", str(SOURCE), "-o", str(obj)], check=True, timeout=30)
    subprocess.run(
        ["ld", "-Ttext=0xff000", "-e", "0xff000", "--oformat=binary", str(obj), "-o", str(binary)],
        check=True,
        timeout=30,
    )
    assert binary.read_bytes() == probe._PROBE_CODE


async def test_probe_image_reaches_the_exit_under_tcg(tmp_path: Path) -> None:
    image = tmp_path / "probe.bin"
    image.write_bytes(probe.probe_image())
    ok, seconds, why = await probe.run_probe("qemu-system-x86_64", "tcg", image, 10.0)
    assert ok, why
    assert seconds < 10


async def test_a_probe_that_never_exits_is_killed_in_time(tmp_path: Path) -> None:
    image = tmp_path / "hlt.bin"
    image.write_bytes(b"\xf4" * 0x10000)  # hlt forever: never reaches isa-debug-exit
    loop = asyncio.get_running_loop()
    started = loop.time()
    ok, _, why = await probe.run_probe("qemu-system-x86_64", "tcg", image, 0.5)
    assert not ok
    assert why == "no exit within 0.5s"
    assert loop.time() - started < 3

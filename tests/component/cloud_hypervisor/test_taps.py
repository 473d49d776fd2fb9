"""open_tap against real taps in a throwaway ``ch-`` network namespace (needs root).

The probe runs inside the namespace (``ip netns exec``): it opens the taps with
:func:`open_tap`, sends the fds to the contract fake with ``vm.add-net`` over a real unix
socket, and reports what the fake received (TUNGETIFF on the received fds names the tap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PROBE = r"""
import asyncio, json, os, sys, tempfile
from hypervisor.cloud_hypervisor.client import CloudHypervisorClient
from hypervisor.cloud_hypervisor.config import net_config, vm_config
from hypervisor.cloud_hypervisor.taps import open_tap
from hypervisor.machine import KernelBoot, MachineConfig, NetDevice
from hypervisor.errors import HypervisorError
from tests.component.cloud_hypervisor.fake_vmm import FakeServer, FakeVmm

out = {}
for name, queues in (("chmissing0", 1), ("chtap1", 2)):
    try:
        os.close(open_tap(name, queues)[0])
        out[name] = "opened"
    except HypervisorError as err:
        out[name] = str(err)

async def main() -> None:
    d = tempfile.mkdtemp(prefix="ch-", dir="/tmp")
    fake = FakeVmm()
    with FakeServer(os.path.join(d, "api.sock"), fake) as srv:
        async with CloudHypervisorClient(srv.path, timeout=5) as c:
            await c.create(vm_config(MachineConfig(name="t", vcpus=1, memory_bytes=1 << 30,
                                                   kernel=KernelBoot(kernel="/k"))))
            for tap, q in (("chtap0", 2), ("chtap1", 1)):
                dev = NetDevice(id="n-" + tap, tap=tap, mac="52:54:00:00:00:01", mtu=1500, queues=q)
                fds = open_tap(tap, q)
                try:
                    await c.add_net(net_config(dev, len(fds)), fds)
                finally:
                    for fd in fds:
                        os.close(fd)
    out["received"] = [[i.device_id, i.kind, i.tap_name, i.rdev] for i in fake.fds]
    out["violations"] = fake.violations
    os.rmdir(d)

asyncio.run(main())
print(json.dumps(out))
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("test_taps needs root to create a network namespace and taps")
    name = f"ch-tap-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "tuntap", "add", "dev", "chtap0", "mode", "tap", "multi_queue")
        ip("-n", name, "tuntap", "add", "dev", "chtap1", "mode", "tap")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def test_real_taps_reach_the_vmm_as_fds(netns: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["violations"] == []
    tun_rdev = os.stat("/dev/net/tun").st_rdev
    assert out["received"] == [
        ["n-chtap0", "chr", "chtap0", tun_rdev],
        ["n-chtap0", "chr", "chtap0", tun_rdev],
        ["n-chtap1", "chr", "chtap1", tun_rdev],
    ]
    assert out["chmissing0"] == "tap 'chmissing0' does not exist in this network namespace"
    assert out["chtap1"].startswith("cannot open tap 'chtap1' with 2 queue(s)")

"""CloudHypervisorClient against the contract-enforcing fake API (real unix socket, real fds)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hypervisor.cloud_hypervisor.client import CloudHypervisorClient
from hypervisor.cloud_hypervisor.config import device_config, net_config, vdpa_config, vm_config
from hypervisor.cloud_hypervisor.events import EventParser
from hypervisor.errors import ApiError, HypervisorError
from hypervisor.machine import (
    DiskImage,
    KernelBoot,
    MachineConfig,
    NetDevice,
    VdpaDevice,
    VfioDevice,
)
from launcher.qcow2 import create_overlay
from tests.component.cloud_hypervisor import openapi
from tests.component.cloud_hypervisor.fake_vmm import Answer, FakeServer, FakeVmm

MACHINE = MachineConfig(name="vm", vcpus=2, memory_bytes=1 << 30, kernel=KernelBoot(kernel="/k"))
NIC = NetDevice(id="net0", tap="tap0", mac="52:54:00:00:00:01", mtu=1500, queues=2)


@pytest.fixture
async def client(server: FakeServer) -> AsyncIterator[CloudHypervisorClient]:
    async with CloudHypervisorClient(server.path, timeout=5.0) as c:
        yield c


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(2)]
    try:
        yield made
    finally:
        for r, w in made:
            os.close(r)
            os.close(w)


def read_events(fd: int) -> list[tuple[str, str]]:
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return []
    return [(e.source, e.name) for e in EventParser().feed(data)]


async def test_ping_answer_is_valid(client: CloudHypervisorClient) -> None:
    pong = await client.ping()
    assert openapi.errors("VmmPingResponse", pong) == []
    assert pong["pid"] == os.getpid()


async def test_full_flow_with_tap_fds(
    client: CloudHypervisorClient,
    fake: FakeVmm,
    pipes: list[tuple[int, int]],
    events_pipe: tuple[int, int],
) -> None:
    await client.create(vm_config(MACHINE))
    fds = [r for r, _ in pipes]
    assert await client.add_net(net_config(NIC, len(fds)), fds) is None  # cold plug: 204
    await client.boot()
    info = await client.info()
    assert info["state"] == "Running"
    assert openapi.errors("VmInfo", info) == []
    assert info["config"]["net"][0]["num_queues"] == 4
    # the fds arrived as the very same pipes (same inode), on vm.add-net only
    assert [(i.kind, i.device_id) for i in fake.fds] == [("fifo", "net0"), ("fifo", "net0")]
    assert [i.ino for i in fake.fds] == [os.fstat(fd).st_ino for fd in fds]
    assert ("PUT", "vm.add-net", 2) in fake.requests
    assert all(n == 0 for _, e, n in fake.requests if e != "vm.add-net")
    counters = await client.counters()
    assert counters == {"net0": {"rx_bytes": 1500, "rx_frames": 1, "tx_bytes": 0, "tx_frames": 0}}
    hot = await client.add_device(
        device_config(VfioDevice(id="vf0", sysfs_path="/sys/bus/pci/devices/0000:58:01.2"))
    )
    assert openapi.errors("PciDeviceInfo", hot) == [] and hot["id"] == "vf0"
    vdpa = await client.add_vdpa(vdpa_config(VdpaDevice(id="vd0", path="/dev/vhost-vdpa-0")))
    assert vdpa["id"] == "vd0"
    await client.remove_device("vf0")
    await client.pause()
    await client.resume()
    await client.power_button()
    assert fake.state == "Shutdown"
    assert read_events(events_pipe[0]) == [
        ("vm", "booting"),
        ("vm", "booted"),
        ("vm", "device-removed"),
        ("vm", "pausing"),
        ("vm", "paused"),
        ("vm", "resuming"),
        ("vm", "resumed"),
        ("vm", "shutdown"),
        ("vmm", "shutdown"),
    ]


async def test_boot_before_create_is_404_with_body(client: CloudHypervisorClient) -> None:
    with pytest.raises(ApiError) as info:
        await client.boot()
    assert (info.value.endpoint, info.value.status) == ("vm.boot", 404)
    assert "VM is not created" in info.value.body
    assert "vm.boot answered HTTP 404" in str(info.value)


@pytest.mark.parametrize("call", ["info", "counters", "power_button", "shutdown", "pause"])
async def test_vm_endpoints_before_create_are_404(client: CloudHypervisorClient, call: str) -> None:
    with pytest.raises(ApiError) as info:
        await getattr(client, call)()
    assert info.value.status == 404


async def test_invalid_vm_config_is_400_naming_the_field(client: CloudHypervisorClient) -> None:
    body = vm_config(MACHINE)
    body["cpus"]["boot_vcpus"] = 0
    with pytest.raises(ApiError) as info:
        await client.create(body)
    assert info.value.status == 400
    assert "Failed to deserialize JSON" in info.value.body and "cpus/boot_vcpus" in info.value.body


async def test_create_twice_is_500(client: CloudHypervisorClient) -> None:
    await client.create(vm_config(MACHINE))
    with pytest.raises(ApiError) as info:
        await client.create(vm_config(MACHINE))
    assert (info.value.endpoint, info.value.status) == ("vm.create", 500)
    assert "already created" in info.value.body


async def test_boot_twice_is_500(client: CloudHypervisorClient) -> None:
    await client.create(vm_config(MACHINE))
    await client.boot()
    with pytest.raises(ApiError) as info:
        await client.boot()
    assert info.value.status == 500


async def test_fds_on_vm_create_are_refused(
    client: CloudHypervisorClient, pipes: list[tuple[int, int]]
) -> None:
    with pytest.raises(ApiError) as info:
        await client.put_with_fds("vm.create", vm_config(MACHINE), [pipes[0][0]])
    assert info.value.status == 400 and "ignores them" in info.value.body


async def test_num_queues_must_be_twice_the_fds(
    client: CloudHypervisorClient, pipes: list[tuple[int, int]]
) -> None:
    await client.create(vm_config(MACHINE))
    body = net_config(NIC, 2) | {"num_queues": 2}
    with pytest.raises(ApiError) as info:
        await client.add_net(body, [r for r, _ in pipes])
    assert info.value.status == 500 and "does not match 2 tap fds" in info.value.body


async def test_add_net_without_tap_or_fds_is_refused(client: CloudHypervisorClient) -> None:
    await client.create(vm_config(MACHINE))
    with pytest.raises(ApiError, match="tap of its own"):
        await client.add_net({"id": "n", "mac": "52:54:00:00:00:09"})


async def test_injected_500_carries_endpoint_status_body(
    client: CloudHypervisorClient, fake: FakeVmm
) -> None:
    await client.create(vm_config(MACHINE))
    await client.boot()
    fake.fail_next["vm.power-button"] = Answer(500, ["Error from API", "ACPI not available"])
    with pytest.raises(ApiError) as info:
        await client.power_button()
    err = info.value
    assert (err.endpoint, err.status) == ("vm.power-button", 500)
    assert "ACPI not available" in err.body and "ACPI not available" in str(err)


async def test_injected_400_on_the_fd_path(
    client: CloudHypervisorClient, fake: FakeVmm, pipes: list[tuple[int, int]]
) -> None:
    await client.create(vm_config(MACHINE))
    fake.fail_next["vm.add-net"] = Answer(400, ["Bad Request"])
    with pytest.raises(ApiError) as info:
        await client.add_net(net_config(NIC, 2), [r for r, _ in pipes])
    assert (info.value.endpoint, info.value.status, info.value.body) == (
        "vm.add-net",
        400,
        '["Bad Request"]',
    )


async def test_unknown_endpoint_is_404(client: CloudHypervisorClient) -> None:
    with pytest.raises(ApiError) as info:
        await client.request("GET", "vm.bogus")
    assert info.value.status == 404 and "Not Found" in info.value.body


async def test_wrong_method_is_400(client: CloudHypervisorClient) -> None:
    with pytest.raises(ApiError) as info:
        await client.request("GET", "vm.boot")
    assert info.value.status == 400


async def test_missing_socket_names_the_path(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "absent.sock")
    async with CloudHypervisorClient(path, timeout=2.0) as c:
        with pytest.raises(HypervisorError, match=f"socket {path} refused vmm.ping"):
            await c.ping()
        with pytest.raises(HypervisorError, match=f"socket {path} refused vm.add-net"):
            await c.add_net(net_config(NIC, 2), [0, 1])


async def test_slow_answer_times_out(
    server: FakeServer, fake: FakeVmm, pipes: list[tuple[int, int]]
) -> None:
    fake.delay["vm.info"] = 1.5
    fake.delay["vm.add-net"] = 1.5
    async with CloudHypervisorClient(server.path, timeout=0.3) as c:
        await c.create(vm_config(MACHINE))
        with pytest.raises(HypervisorError, match=r"vm.info got no answer within 0.3 s"):
            await c.info()
        with pytest.raises(HypervisorError, match=r"vm.add-net got no answer within 0.3 s"):
            await c.add_net(net_config(NIC, 2), [r for r, _ in pipes])


async def test_container_disk_overlay_opens_its_image_read_only(
    client: CloudHypervisorClient, fake: FakeVmm, tmp_path: Path
) -> None:
    """The real VMM refuses a qcow2 with a backing file unless backing_files is on, and
    then opens the backing file read-only: the launcher's overlay config boots."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x55" * 65536)
    image.chmod(0o444)
    overlay = tmp_path / "overlay.qcow2"
    create_overlay(overlay, str(image), "raw", 65536)
    disk = DiskImage("root", str(overlay), "qcow2", backing=str(image), backing_format="raw")
    await client.create(vm_config(replace(MACHINE, disks=(disk,))))
    await client.boot()
    assert fake.disk_opens == [(str(overlay), "rw"), (str(image), "ro")]


async def test_qcow2_with_a_backing_file_is_refused_without_backing_files(
    client: CloudHypervisorClient, fake: FakeVmm, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x55" * 65536)
    overlay = tmp_path / "overlay.qcow2"
    create_overlay(overlay, str(image), "raw", 65536)
    body = vm_config(replace(MACHINE, disks=(DiskImage("root", str(overlay), "qcow2"),)))
    assert "backing_files" not in body["disks"][0]
    await client.create(body)
    with pytest.raises(ApiError, match="backing files not allowed"):
        await client.boot()
    assert fake.disk_opens == [(str(overlay), "rw")]

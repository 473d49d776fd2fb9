"""launcher.volumes: the documented layout, format detection, problems and sparse creation.

Real files in a temporary directory; block devices are covered by
tests/integration/test_plan_cli.py (a real loop device).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import EXIT_INVALID, VolumeError
from launcher.qcow2 import create_overlay, read_header
from launcher.spec.model import (
    CloudInitNoCloud,
    ContainerDisk,
    DataVolume,
    Disk,
    EmptyDisk,
    HostDisk,
    KernelBoot,
    PersistentVolumeClaim,
    SourceShape,
    VmSpec,
    Volume,
    VolumeSource,
)
from launcher.volumes import (
    QCOW2_MAGIC,
    FileState,
    VolumeKind,
    VolumeLayout,
    detect_format,
    prepare,
    require_present,
    resolve,
)

GIB = 1 << 30


def spec_with(
    *volumes: tuple[str, VolumeSource],
    shape: SourceShape = SourceShape.KUBEVIRT_VMI,
    kernel: KernelBoot | None = None,
    cdrom: tuple[str, ...] = (),
) -> VmSpec:
    return VmSpec(
        shape=shape,
        name="vm1",
        kernel=kernel,
        disks=tuple(Disk(name=n, cdrom=n in cdrom) for n, _ in volumes),
        volumes=tuple(Volume(name=n, source=s) for n, s in volumes),
    )


@pytest.fixture
def layout(tmp_path: Path) -> VolumeLayout:
    return VolumeLayout(volumes_dir=tmp_path / "volumes", scratch_dir=tmp_path / "scratch")


def put(path: Path, data: bytes = b"\0" * 512) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_virtink_kernel_is_vmlinux_in_the_kernel_dir(layout: VolumeLayout) -> None:
    spec = spec_with(shape=SourceShape.VIRTINK, kernel=KernelBoot(image="k:1", cmdline="c=1"))
    missing = resolve(spec, layout)
    assert missing.kernel is not None and missing.kernel.state is FileState.MISSING
    expected = layout.volumes_dir / "kernel" / "vmlinux"
    assert missing.problems == (f"kernel 'kernel': no file at {expected}",)
    put(expected)
    found = resolve(spec, layout)
    assert found.kernel is not None and found.kernel.path == str(expected)
    assert found.kernel.state is FileState.PRESENT and found.initrd is None
    assert found.cmdline == "c=1" and found.problems == ()


def test_a_directory_at_the_kernel_path_is_named_as_such(layout: VolumeLayout) -> None:
    """issue 16: a directory where the kernel should be is not "no file at"."""
    spec = spec_with(shape=SourceShape.VIRTINK, kernel=KernelBoot(image="k:1", cmdline="c=1"))
    where = layout.volumes_dir / "kernel" / "vmlinux"
    where.mkdir(parents=True)
    resolved = resolve(spec, layout)
    assert resolved.problems == (
        f"kernel 'kernel': no usable file at {where} ({where} is a directory)",
    )


def test_kubevirt_kernel_boot_paths_are_rooted_in_the_kernel_dir(layout: VolumeLayout) -> None:
    boot = KernelBoot(
        image="k:1", kernel_path="/boot/vmlinuz", initrd_path="/boot/initrd.img", cmdline="a"
    )
    spec = spec_with(kernel=boot)
    put(layout.volumes_dir / "kernel/boot/vmlinuz")
    resolved = resolve(spec, layout)
    assert resolved.kernel is not None and resolved.kernel.state is FileState.PRESENT
    assert resolved.initrd is not None and resolved.initrd.state is FileState.MISSING
    initrd = layout.volumes_dir / "kernel/boot/initrd.img"
    assert resolved.problems == (f"initrd 'initrd': no file at {initrd}",)


@pytest.mark.parametrize("path", ["../../etc/shadow", "/boot/../../x", "/"])
def test_kernel_path_cannot_leave_the_kernel_dir(layout: VolumeLayout, path: str) -> None:
    spec = spec_with(kernel=KernelBoot(image="k", kernel_path=path))
    with pytest.raises(VolumeError, match="does not name a file below"):
        resolve(spec, layout)


def test_volume_name_dotdot_is_refused(layout: VolumeLayout) -> None:
    with pytest.raises(VolumeError, match=r"volume name '\.\.'"):
        resolve(spec_with(("..", ContainerDisk(image="x"))), layout)


def qcow2_image(path: Path, size: int = GIB) -> Path:
    """A real (empty) qcow2 file of virtual ``size`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    create_overlay(path, "/nonexistent/base.raw", "raw", size)
    return path


def test_container_disk_format_and_kubevirt_path(layout: VolumeLayout) -> None:
    qcow2_image(layout.volumes_dir / "root/disk.img", 3 * GIB)
    put(layout.volumes_dir / "data/fedora.raw", b"\x55" * 100)
    spec = spec_with(
        ("root", ContainerDisk(image="a")),
        ("data", ContainerDisk(image="b", path="/disk/fedora.raw")),
    )
    disks = resolve(spec, layout).disks
    images = [d.file.backing for d in disks]
    assert [(i.volume, i.kind, i.format, i.state) for i in images if i is not None] == [
        ("root", VolumeKind.CONTAINER_DISK, "qcow2", FileState.PRESENT),
        ("data", VolumeKind.CONTAINER_DISK, "raw", FileState.PRESENT),
    ]
    assert images[1] is not None and images[1].path == str(layout.volumes_dir / "data/fedora.raw")
    # the guest writes to an overlay of the image's virtual size, made at run
    assert [(d.file.path, d.file.format, d.file.state, d.file.size_bytes) for d in disks] == [
        (str(layout.scratch_dir / "overlay/root.qcow2"), "qcow2", FileState.CREATE, 3 * GIB),
        (str(layout.scratch_dir / "overlay/data.qcow2"), "qcow2", FileState.CREATE, 100),
    ]
    assert not (layout.scratch_dir / "overlay").exists()  # resolve only reads


def test_container_disk_with_path_falls_back_to_disk_img(layout: VolumeLayout) -> None:
    spec = spec_with(("data", ContainerDisk(image="b", path="/disk/f.qcow2")))
    overlay = resolve(spec, layout).disks[0].file
    missing = overlay.backing
    assert missing is not None
    looked = (str(layout.volumes_dir / "data/f.qcow2"), str(layout.volumes_dir / "data/disk.img"))
    assert missing.state is FileState.MISSING and missing.looked_at == looked
    problem = f"containerDisk 'data': no file at {looked[0]} or {looked[1]}"
    assert missing.problem == problem and overlay.problem == problem
    put(layout.volumes_dir / "data/disk.img")
    image = resolve(spec, layout).disks[0].file.backing
    assert image is not None and image.path == looked[1]


def test_pvc_and_data_volume_are_keyed_by_volume_name(layout: VolumeLayout) -> None:
    put(layout.volumes_dir / "pvcvol/disk.img")
    put(layout.volumes_dir / "dvvol/disk.img")
    spec = spec_with(
        ("pvcvol", PersistentVolumeClaim(claim_name="claim-a")),
        ("dvvol", DataVolume(name="dv-b")),
    )
    disks = resolve(spec, layout).disks
    assert [d.file.kind for d in disks] == [
        VolumeKind.PERSISTENT_VOLUME_CLAIM,
        VolumeKind.DATA_VOLUME,
    ]
    assert [d.file.path for d in disks] == [
        str(layout.volumes_dir / "pvcvol/disk.img"),
        str(layout.volumes_dir / "dvvol/disk.img"),
    ]


def test_pvc_directory_without_disk_img_is_missing(layout: VolumeLayout) -> None:
    (layout.volumes_dir / "pvcvol").mkdir(parents=True)
    spec = spec_with(("pvcvol", PersistentVolumeClaim(claim_name="c")))
    resolved = resolve(spec, layout)
    assert resolved.disks[0].file.state is FileState.MISSING
    with pytest.raises(VolumeError) as info:
        require_present(resolved)
    assert info.value.exit_code == EXIT_INVALID
    assert "persistentVolumeClaim 'pvcvol'" in str(info.value)
    assert str(layout.volumes_dir / "pvcvol/disk.img") in str(info.value)


def test_require_present_counts_the_rest(layout: VolumeLayout) -> None:
    spec = spec_with(("a", ContainerDisk(image="x")), ("b", ContainerDisk(image="y")))
    with pytest.raises(VolumeError, match=r"containerDisk 'a': .* \(and 1 more missing\)$"):
        require_present(resolve(spec, layout))


def test_host_disk(layout: VolumeLayout, tmp_path: Path) -> None:
    there = put(tmp_path / "node/there.img")
    spec = spec_with(
        ("there", HostDisk(path=str(there))),
        ("gone", HostDisk(path=str(tmp_path / "node/gone.img"))),
        ("made", HostDisk(path=str(tmp_path / "node/made.img"), type="DiskOrCreate",
                          capacity_bytes=GIB)),
    )  # fmt: skip
    states = [d.file.state for d in resolve(spec, layout).disks]
    assert states == [FileState.PRESENT, FileState.MISSING, FileState.CREATE]


def test_prepare_creates_sparse_disks_and_keeps_existing_ones(layout: VolumeLayout) -> None:
    spec = spec_with(("scratch", EmptyDisk(capacity_bytes=2 * GIB)))
    resolved = resolve(spec, layout)
    planned = resolved.disks[0].file
    assert planned.state is FileState.CREATE
    assert planned.path == str(layout.scratch_dir / "empty/scratch.img")
    assert not Path(planned.path).exists()  # resolve only reads
    ready = prepare(resolved)
    made = Path(ready.disks[0].file.path)
    st = made.stat()
    assert st.st_size == 2 * GIB and st.st_blocks * 512 < 1 << 20  # sparse
    assert ready.disks[0].file.state is FileState.PRESENT
    with made.open("r+b") as f:
        f.write(b"guest data")
    prepare(resolve(spec, layout))  # a restarted launcher keeps the scratch disk
    assert made.read_bytes()[:10] == b"guest data" and made.stat().st_size == 2 * GIB


def test_cloud_init_is_a_planned_read_only_iso(layout: VolumeLayout) -> None:
    spec = spec_with(("cidata", CloudInitNoCloud(user_data="#cloud-config\n")), cdrom=("cidata",))
    disk = resolve(spec, layout).disks[0]
    assert disk.file.state is FileState.BUILD and disk.file.kind is VolumeKind.CLOUD_INIT
    assert disk.file.path == str(layout.scratch_dir / "cloud-init/cidata.iso")
    assert disk.read_only and disk.cdrom and disk.file.problem is None


def test_detect_format_of_short_and_unreadable_files(tmp_path: Path) -> None:
    assert detect_format(put(tmp_path / "short", b"QF")) == "raw"
    assert detect_format(put(tmp_path / "q", QCOW2_MAGIC)) == "qcow2"
    with pytest.raises(VolumeError, match="cannot read the image header"):
        detect_format(tmp_path / "absent")


def test_prepare_creates_a_missing_host_disk_or_create(
    layout: VolumeLayout, tmp_path: Path
) -> None:
    target = tmp_path / "node/sub/made.img"
    spec = spec_with(
        ("made", HostDisk(path=str(target), type="DiskOrCreate", capacity_bytes=64 << 20))
    )
    ready = prepare(resolve(spec, layout))
    assert ready.disks[0].file.state is FileState.PRESENT
    assert target.stat().st_size == 64 << 20
    assert resolve(spec, layout).disks[0].file.state is FileState.PRESENT  # now found


def test_prepare_needs_a_capacity(layout: VolumeLayout, tmp_path: Path) -> None:
    spec = spec_with(
        ("made", HostDisk(path=str(tmp_path / "x.img"), type="DiskOrCreate", capacity_bytes=None))
    )
    with pytest.raises(VolumeError, match=r"hostDisk 'made' has no capacity to create .*x\.img"):
        prepare(resolve(spec, layout))


def test_container_disk_single_image_of_any_name(layout: VolumeLayout) -> None:
    spec = spec_with(("root", ContainerDisk(image="quay.io/containerdisks/fedora:40")))
    image = qcow2_image(layout.volumes_dir / "root/fedora-40.qcow2")
    put(layout.volumes_dir / "root/.hidden")
    found = resolve(spec, layout).disks[0].file.backing
    assert found is not None and (found.path, found.format) == (str(image), "qcow2")
    put(layout.volumes_dir / "root/second.img")  # two candidates: ambiguous, so missing
    missing = resolve(spec, layout).disks[0].file.backing
    assert missing is not None and missing.state is FileState.MISSING
    assert missing.looked_at == (str(layout.volumes_dir / "root/disk.img"),)


def test_read_only_and_cdrom_container_disks_get_no_overlay(layout: VolumeLayout) -> None:
    put(layout.volumes_dir / "iso/disk.img")
    put(layout.volumes_dir / "ro/disk.img")
    spec = VmSpec(
        shape=SourceShape.KUBEVIRT_VMI,
        name="vm1",
        disks=(Disk(name="iso", cdrom=True), Disk(name="ro", read_only=True)),
        volumes=(
            Volume(name="iso", source=ContainerDisk(image="i")),
            Volume(name="ro", source=ContainerDisk(image="r")),
        ),
    )
    disks = resolve(spec, layout).disks
    assert [(d.file.path, d.file.backing, d.read_only) for d in disks] == [
        (str(layout.volumes_dir / "iso/disk.img"), None, True),
        (str(layout.volumes_dir / "ro/disk.img"), None, True),
    ]
    assert prepare(resolve(spec, layout)).disks == disks  # nothing to make


def test_prepare_makes_the_overlay_and_keeps_it_across_a_restart(layout: VolumeLayout) -> None:
    image = put(layout.volumes_dir / "root/disk.img", b"\x55" * 4096)
    image.chmod(0o444)
    spec = spec_with(("root", ContainerDisk(image="a")))
    ready = prepare(resolve(spec, layout)).disks[0].file
    overlay = Path(ready.path)
    assert ready.state is FileState.PRESENT and ready.size_bytes == 4096
    header = read_header(overlay)
    assert (header.backing_file, header.backing_format, header.size) == (str(image), "raw", 4096)
    with overlay.open("ab") as f:  # what the VMM would write for the guest
        f.write(b"guest data")
    again = prepare(resolve(spec, layout)).disks[0].file
    assert again.state is FileState.PRESENT and overlay.read_bytes().endswith(b"guest data")
    assert image.read_bytes() == b"\x55" * 4096  # the image itself is never written


def test_prepare_replaces_an_overlay_made_for_another_image(
    layout: VolumeLayout, caplog: pytest.LogCaptureFixture
) -> None:
    put(layout.volumes_dir / "root/disk.img", b"\x55" * 4096)
    spec = spec_with(("root", ContainerDisk(image="a")))
    overlay = layout.scratch_dir / "overlay/root.qcow2"
    overlay.parent.mkdir(parents=True)
    create_overlay(overlay, "/old/image.raw", "raw", 8192)
    prepare(resolve(spec, layout))
    header = read_header(overlay)
    assert (header.backing_file, header.size) == (str(layout.volumes_dir / "root/disk.img"), 4096)
    assert "was made for another image (/old/image.raw, raw, 8192 bytes)" in caplog.text


def test_prepare_reports_an_unreadable_image_header(layout: VolumeLayout) -> None:
    put(layout.volumes_dir / "root/disk.img", QCOW2_MAGIC + b"\0" * 8)  # cut short
    spec = spec_with(("root", ContainerDisk(image="a")))
    resolved = resolve(spec, layout)
    assert resolved.disks[0].file.size_bytes is None and resolved.problems == ()
    with pytest.raises(VolumeError, match=r"containerDisk 'root': cannot read the size of .*"):
        prepare(resolved)


def test_prepare_reports_an_overlay_it_cannot_write(layout: VolumeLayout) -> None:
    put(layout.volumes_dir / "root/disk.img", b"\x55" * 4096)
    layout.scratch_dir.mkdir(parents=True)
    (layout.scratch_dir / "overlay").write_text("a file where the directory goes")
    spec = spec_with(("root", ContainerDisk(image="a")))
    with pytest.raises(VolumeError, match=r"cannot create the overlay of containerDisk 'root'"):
        prepare(resolve(spec, layout))

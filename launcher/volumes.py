"""Where the files a VM spec names live inside the pod: kernel, initrd and every disk volume.

Called by ``virt-launcher plan`` (which prints every resolved path and lists what is
missing as problems) and by ``virt-launcher run`` (``resolve`` → ``require_present`` →
``prepare``, then ``launcher.machine.build_machine``). :func:`resolve` only reads the file
system; :func:`prepare` creates the sparse scratch disks and the containerDisk overlays.
The layout (docs/volumes.md)::

    <volumes-dir>/kernel/vmlinux            Virtink instance.kernel.image (its image has /vmlinux)
    <volumes-dir>/kernel/<kernelPath>       KubeVirt firmware.kernelBoot kernelPath / initrdPath
    <volumes-dir>/<volume>/disk.img         containerDisk, persistentVolumeClaim, dataVolume
    <volumes-dir>/<volume>/<basename(path)> containerDisk with a KubeVirt ``path``
    <volumes-dir>/<volume>/<the one file>   containerDisk without ``path`` and no disk.img
    <volumes-dir>/<volume>                  PVC / dataVolume in block mode: the device itself
    <hostDisk.path>                         hostDisk (DiskOrCreate: created sparse at run)
    <scratch-dir>/empty/<volume>.img        emptyDisk, created sparse at run
    <scratch-dir>/overlay/<volume>.qcow2    a writable containerDisk's copy-on-write overlay
    <scratch-dir>/cloud-init/<volume>.iso   cloud-init NoCloud ISO (built at run)

A ``containerDisk`` is ephemeral, as in KubeVirt: the image in the pod (often on a
read-only mount) is only ever read; unless the disk is read-only or a CD-ROM, the guest
gets a qcow2 overlay backed by it (:attr:`ResolvedFile.backing`), made by
:func:`prepare` and kept across a launcher restart in the same pod (docs/volumes.md).

The volume directory is keyed by the *volume* name, not the claim name, as KubeVirt
mounts PVCs at ``/var/run/kubevirt-private/vmi-disks/<volume>/disk.img``. The image
format is detected from the file's first bytes (qcow2 magic ``QFI\\xfb``, else raw).
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from launcher import qcow2
from launcher.errors import VolumeError
from launcher.spec.model import (
    CloudInitNoCloud,
    ContainerDisk,
    DataVolume,
    Disk,
    EmptyDisk,
    HostDisk,
    PersistentVolumeClaim,
    SourceShape,
    VmSpec,
    Volume,
)

__all__ = [
    "DEFAULT_VOLUMES_DIR",
    "DEFAULT_SCRATCH_DIR",
    "OVERLAY_DIR",
    "QCOW2_MAGIC",
    "FileState",
    "ResolvedDisk",
    "ResolvedFile",
    "ResolvedVolumes",
    "VolumeKind",
    "VolumeLayout",
    "detect_format",
    "guest_read_only",
    "prepare",
    "require_present",
    "resolve",
]

log = logging.getLogger(__name__)

DEFAULT_VOLUMES_DIR = Path("/var/run/virt-launcher/volumes")
DEFAULT_SCRATCH_DIR = Path("/var/run/virt-launcher")
QCOW2_MAGIC = qcow2.MAGIC
OVERLAY_DIR = "overlay"  # below the scratch (state) dir
KERNEL_DIR = "kernel"
VIRTINK_KERNEL_FILE = "vmlinux"
DISK_FILE = "disk.img"


class VolumeKind(enum.StrEnum):
    """What a resolved file is for."""

    KERNEL = "kernel"
    INITRD = "initrd"
    CONTAINER_DISK = "containerDisk"
    PERSISTENT_VOLUME_CLAIM = "persistentVolumeClaim"
    DATA_VOLUME = "dataVolume"
    HOST_DISK = "hostDisk"
    EMPTY_DISK = "emptyDisk"
    CLOUD_INIT = "cloudInit"


class FileState(enum.StrEnum):
    """Whether the file is there, and if not, who makes it."""

    PRESENT = "present"  # exists now (a regular file or a block device)
    MISSING = "missing"  # should exist now and does not: an error at run
    CREATE = "create"  # made by prepare() (emptyDisk, hostDisk DiskOrCreate, overlays)
    BUILD = "build"  # generated at run by a later stage (the cloud-init ISO)


@dataclass(frozen=True, slots=True)
class VolumeLayout:
    """Where to look: ``volumes_dir`` for mounted volumes, ``scratch_dir`` for made files."""

    volumes_dir: Path = DEFAULT_VOLUMES_DIR
    scratch_dir: Path = DEFAULT_SCRATCH_DIR


@dataclass(frozen=True, slots=True)
class ResolvedFile:
    """One file the VM needs: the spec name it comes from and the path it resolved to."""

    volume: str  # volume name; "kernel" / "initrd" for the boot files
    kind: VolumeKind
    path: str
    state: FileState
    format: str = "raw"  # "raw" or "qcow2"
    block: bool = False  # a block device rather than a regular file
    size_bytes: int | None = None  # current size, or the size to create
    looked_at: tuple[str, ...] = ()  # every path tried, in order (for the error message)
    # A containerDisk overlay's image: read only, never written (``path`` is the overlay)
    backing: ResolvedFile | None = None

    @property
    def problem(self) -> str | None:
        """One sentence naming the volume and the paths looked at, when the file is missing."""
        if self.backing is not None:
            return self.backing.problem
        if self.state is not FileState.MISSING:
            return None
        where = " or ".join(self.looked_at) or self.path
        found = [f"{p} is {what}" for p in self.looked_at or (self.path,) if (what := _what_is(p))]
        if found:  # something is there, just not a file we can use: say what
            return (
                f"{self.kind.value} {self.volume!r}: no usable file at {where} ({'; '.join(found)})"
            )
        return f"{self.kind.value} {self.volume!r}: no file at {where}"


def _what_is(path: str) -> str | None:
    """What is at ``path`` when it is not a usable file (for the error message), else None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"not accessible ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISBLK(mode):
        return "a block device (not allowed here)"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


@dataclass(frozen=True, slots=True)
class ResolvedDisk:
    """A spec disk with its backing file."""

    name: str
    file: ResolvedFile
    read_only: bool = False
    cdrom: bool = False
    boot_order: int | None = None


@dataclass(frozen=True, slots=True)
class ResolvedVolumes:
    """Every file of the VM, in spec order: boot files first, then one entry per disk."""

    layout: VolumeLayout
    kernel: ResolvedFile | None = None
    initrd: ResolvedFile | None = None
    cmdline: str = ""
    disks: tuple[ResolvedDisk, ...] = ()

    @property
    def files(self) -> tuple[ResolvedFile, ...]:
        """Kernel, initrd and disk files, in that order."""
        boot = tuple(f for f in (self.kernel, self.initrd) if f is not None)
        return boot + tuple(d.file for d in self.disks)

    @property
    def problems(self) -> tuple[str, ...]:
        """One sentence per missing file."""
        return tuple(p for f in self.files if (p := f.problem) is not None)


def detect_format(path: Path) -> str:
    """``"qcow2"`` when ``path`` starts with the qcow2 magic, else ``"raw"``."""
    try:
        with path.open("rb") as f:
            head = f.read(len(QCOW2_MAGIC))
    except OSError as err:
        raise VolumeError(f"cannot read the image header of {path}: {err}") from err
    return "qcow2" if head == QCOW2_MAGIC else "raw"


def _inside(base: Path, relative: str, what: str) -> Path:
    """``base / relative`` refusing names that climb out of ``base`` (``..``, absolute)."""
    parts = PurePosixPath(relative).parts
    clean = [p for p in parts if p not in ("/", ".")]
    if not clean or ".." in clean:
        raise VolumeError(f"{what} {relative!r} does not name a file below {base}")
    return base.joinpath(*clean)


def _probe(
    volume: str, kind: VolumeKind, candidates: list[Path], *, allow_block: bool = False
) -> ResolvedFile:
    """The first candidate that exists (a file, or a block device if allowed), else MISSING."""
    for path in candidates:
        try:
            st = path.stat()
        except OSError:
            continue
        block = stat.S_ISBLK(st.st_mode)
        if stat.S_ISREG(st.st_mode) or (block and allow_block):
            size = st.st_size if not block else _block_size(path)
            return ResolvedFile(
                volume=volume,
                kind=kind,
                path=str(path),
                state=FileState.PRESENT,
                format=detect_format(path),
                block=block,
                size_bytes=size,
                looked_at=tuple(str(p) for p in candidates),
            )
    return ResolvedFile(
        volume=volume,
        kind=kind,
        path=str(candidates[0]),
        state=FileState.MISSING,
        looked_at=tuple(str(p) for p in candidates),
    )


def _only_image(directory: Path) -> Path | None:
    """The one regular, non-hidden file in ``directory``, if it holds exactly one."""
    try:
        files = [p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file()]
    except OSError:
        return None
    return files[0] if len(files) == 1 else None


def _block_size(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _kernel_files(spec: VmSpec, layout: VolumeLayout) -> tuple[ResolvedFile | None, ...]:
    boot = spec.kernel
    if boot is None:
        return None, None
    root = layout.volumes_dir / KERNEL_DIR
    if spec.shape is SourceShape.VIRTINK:
        return _probe("kernel", VolumeKind.KERNEL, [root / VIRTINK_KERNEL_FILE]), None
    kernel = initrd = None
    if boot.kernel_path is not None:
        path = _inside(root, boot.kernel_path, "kernelBoot kernelPath")
        kernel = _probe("kernel", VolumeKind.KERNEL, [path])
    if boot.initrd_path is not None:
        path = _inside(root, boot.initrd_path, "kernelBoot initrdPath")
        initrd = _probe("initrd", VolumeKind.INITRD, [path])
    return kernel, initrd


def _volume_file(volume: Volume, layout: VolumeLayout) -> ResolvedFile:
    source = volume.source
    name = volume.name
    base = _inside(layout.volumes_dir, name, "volume name")
    match source:
        case ContainerDisk(path=inner):
            candidates = [base / DISK_FILE]
            if inner:
                candidates.insert(0, _inside(base, PurePosixPath(inner).name, "containerDisk path"))
            elif (only := _only_image(base)) is not None and only not in candidates:
                # KubeVirt's containerDisk images hold one image of any name in /disk
                candidates.append(only)
            return _probe(name, VolumeKind.CONTAINER_DISK, candidates)
        case PersistentVolumeClaim() | DataVolume():
            kind = (
                VolumeKind.DATA_VOLUME
                if isinstance(source, DataVolume)
                else VolumeKind.PERSISTENT_VOLUME_CLAIM
            )
            # Block mode: the volume path is the device; filesystem mode: disk.img inside.
            return _probe(name, kind, [base / DISK_FILE, base], allow_block=True)
        case HostDisk(path=host_path, type=host_type, capacity_bytes=capacity):
            found = _probe(name, VolumeKind.HOST_DISK, [Path(host_path)], allow_block=True)
            if found.state is FileState.MISSING and host_type == "DiskOrCreate":
                return ResolvedFile(
                    volume=name,
                    kind=VolumeKind.HOST_DISK,
                    path=host_path,
                    state=FileState.CREATE,
                    size_bytes=capacity,
                    looked_at=found.looked_at,
                )
            return found
        case EmptyDisk(capacity_bytes=capacity):
            path = _inside(layout.scratch_dir / "empty", f"{name}.img", "volume name")
            return ResolvedFile(
                volume=name,
                kind=VolumeKind.EMPTY_DISK,
                path=str(path),
                state=FileState.CREATE,
                size_bytes=capacity,
            )
        case CloudInitNoCloud():
            path = _inside(layout.scratch_dir / "cloud-init", f"{name}.iso", "volume name")
            return ResolvedFile(
                volume=name, kind=VolumeKind.CLOUD_INIT, path=str(path), state=FileState.BUILD
            )
    raise VolumeError(f"volume {name!r} has an unknown source {type(source).__name__}")


def _overlay(image: ResolvedFile, layout: VolumeLayout) -> ResolvedFile:
    """The planned qcow2 overlay over the containerDisk ``image`` (made by :func:`prepare`)."""
    path = _inside(layout.scratch_dir / OVERLAY_DIR, f"{image.volume}.qcow2", "volume name")
    size = None
    if image.state is FileState.PRESENT:
        try:
            size = qcow2.virtual_size(Path(image.path), image.format)
        except (OSError, ValueError):
            size = None  # prepare() reports it; resolve() only reads
    return ResolvedFile(
        volume=image.volume,
        kind=VolumeKind.CONTAINER_DISK,
        path=str(path),
        state=FileState.CREATE,
        format="qcow2",
        size_bytes=size,
        backing=image,
    )


def guest_read_only(disk: Disk, volume: Volume) -> bool:
    """Whether the guest only reads ``disk``: marked read-only, a CD-ROM, or the cloud-init
    seed ISO. Every other disk is written (a containerDisk through its overlay)."""
    return disk.read_only or disk.cdrom or isinstance(volume.source, CloudInitNoCloud)


def resolve(spec: VmSpec, layout: VolumeLayout = VolumeLayout()) -> ResolvedVolumes:
    """Resolve the kernel, initrd and every disk of ``spec`` under ``layout``; reads only.

    A missing file is not raised here but recorded as :attr:`FileState.MISSING` (so
    ``plan`` can show it); call :func:`require_present` before starting a VM. Raises
    :class:`VolumeError` only for a name that would leave its directory.
    """
    kernel, initrd = _kernel_files(spec, layout)
    disks = []
    for disk in spec.disks:
        volume = spec.volume_for(disk)
        file = _volume_file(volume, layout)
        read_only = guest_read_only(disk, volume)
        if file.kind is VolumeKind.CONTAINER_DISK and not read_only:
            file = _overlay(file, layout)  # the image itself is never written
        disks.append(
            ResolvedDisk(
                name=disk.name,
                file=file,
                read_only=read_only,
                cdrom=disk.cdrom,
                boot_order=disk.boot_order,
            )
        )
    return ResolvedVolumes(
        layout=layout,
        kernel=kernel,
        initrd=initrd,
        cmdline=spec.kernel.cmdline if spec.kernel is not None else "",
        disks=tuple(disks),
    )


def require_present(volumes: ResolvedVolumes) -> None:
    """Raise :class:`VolumeError` naming the first missing volume and the paths looked at."""
    problems = volumes.problems
    if problems:
        more = f" (and {len(problems) - 1} more missing)" if len(problems) > 1 else ""
        raise VolumeError(f"{problems[0]}{more}")


def _prepare_overlay(file: ResolvedFile) -> ResolvedFile:
    """Make the qcow2 overlay ``file`` over its image, or keep the one a previous run made.

    An existing overlay is kept when it still names the same image, format and size (a
    restarted launcher in the same pod: the guest's writes survive); otherwise it is
    replaced by an empty one, with a warning.
    """
    image = file.backing
    assert image is not None
    path = Path(file.path)
    try:
        size = file.size_bytes or qcow2.virtual_size(Path(image.path), image.format)
    except (OSError, ValueError) as err:
        raise VolumeError(
            f"containerDisk {file.volume!r}: cannot read the size of {image.path}: {err}"
        ) from err
    try:
        found = qcow2.read_header(path) if path.exists() else None
    except (OSError, ValueError):
        found = None
    if found is not None:
        wanted = (image.path, image.format, size)
        if (found.backing_file, found.backing_format, found.size) == wanted:
            log.info(
                "containerDisk overlay kept",
                extra={"event": "overlay-kept", "volume": file.volume, "path": str(path)},
            )
            return replace(file, state=FileState.PRESENT, size_bytes=size)
        log.warning(
            "containerDisk %r: the overlay %s was made for another image (%s, %s, %s bytes); "
            "starting from an empty overlay",
            file.volume,
            path,
            found.backing_file,
            found.backing_format,
            found.size,
            extra={"event": "overlay-replaced", "volume": file.volume, "path": str(path)},
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        qcow2.create_overlay(path, image.path, image.format, size)
    except (OSError, ValueError) as err:
        raise VolumeError(
            f"cannot create the overlay of containerDisk {file.volume!r} at {path}: {err}"
        ) from err
    log.info(
        "containerDisk overlay created",
        extra={
            "event": "overlay-created",
            "volume": file.volume,
            "path": str(path),
            "backing": image.path,
        },
    )
    return replace(file, state=FileState.PRESENT, size_bytes=size)


def prepare(volumes: ResolvedVolumes) -> ResolvedVolumes:
    """Make every ``CREATE`` file; returns the volumes with them PRESENT.

    Scratch disks are created sparse at their size, containerDisk overlays empty over
    their image. An existing file is kept (a restarted launcher finds its scratch disk
    and its overlays again); an overlay made for another image is replaced.
    """
    disks = []
    for disk in volumes.disks:
        file = disk.file
        if file.state is FileState.CREATE and file.backing is not None:
            file = _prepare_overlay(file)
        elif file.state is FileState.CREATE:
            path = Path(file.path)
            if file.size_bytes is None or file.size_bytes <= 0:
                raise VolumeError(
                    f"{file.kind.value} {file.volume!r} has no capacity to create {path} with"
                )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as f:
                    if f.tell() == 0:
                        f.truncate(file.size_bytes)
            except OSError as err:
                raise VolumeError(
                    f"cannot create {file.kind.value} {file.volume!r} at {path}: {err}"
                ) from err
            file = replace(
                file, state=FileState.PRESENT, format="raw", size_bytes=path.stat().st_size
            )
        disks.append(replace(disk, file=file))
    return replace(volumes, disks=tuple(disks))

"""Builds the real-OS test guest: a Debian bookworm cloud-style disk (qcow2), cached.

Provides ``ensure_debian_guest() -> DebianImage`` for the slow e2e tier
(tests/e2e/test_debian_guest.py) and bench/guest_boot.py. The disk is what Debian's own
``genericcloud`` image is in the parts that matter to a VM pod (docs/guest.md): systemd,
cloud-init 22.4 with the netplan renderer on systemd-networkd (DHCPv4, and RA + DHCPv6
through networkd's own clients), systemd-resolved, Debian's cloud kernel (virtio only: no
AHCI), and GRUB in the MBR so it boots **through firmware** (SeaBIOS, QEMU's default and
KubeVirt's) with ``console=ttyS0``. No ssh server, no default password.

How (nothing is mounted, no loop device, nothing is installed on the host):

1. ``mmdebstrap --mode=root --variant=minbase`` fills a directory from Debian's archive
   (bookworm, -updates, -security) with :data:`PACKAGES`, without recommends, without
   man pages, docs and locales;
2. the tree is finished in Python (fstab, grub.cfg, cloud-init and resolv.conf as the
   cloud images have them, systemd-networkd enabled, machine-id emptied) and GRUB's
   ``core.img`` is made with the guest's own ``grub-mkimage`` (run by ``chroot``);
3. ``mkfs.ext4 -d TREE -E offset=1MiB`` writes the root file system straight into a
   sparse raw disk, after the first MiB;
4. the MBR is written here: GRUB's ``boot.img`` code (with the first-sector pointer left
   at LBA 1 and the boot-drive check turned into NOPs, as ``grub-bios-setup`` does for a
   hard disk), one bootable Linux partition, the signature; ``core.img`` goes in the
   sectors after it (its default blocklist already says "the rest of me starts at LBA 2");
5. ``qemu-img convert -c -O qcow2`` makes the compressed qcow2.

The result lives in ``$VIRT_LAUNCHER_CACHE/debian/<hash>/`` (``disk.qcow2``,
``debian.json``), the hash covering this file (package list, configuration, recipe);
the packages are whatever the archive has at the cold build (``debian.json`` records
them). The build holds a file lock and moves its result into place atomically. Root is
needed (mmdebstrap's root mode, chroot). ``python -m testbed.guest.debian [--force]``
builds and prints the path, size and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from testbed.guest.build import (
    DEBIAN_MIRROR,
    DEBIAN_SECURITY,
    GuestBuildError,
    _digest,
    _locked,
    _run,
    cache_root,
)

__all__ = ["DebianImage", "ensure_debian_guest", "PACKAGES", "DEBIAN_CMDLINE"]

HERE = Path(__file__).resolve().parent

# What Debian's bookworm genericcloud image has for booting, networking and cloud-init
# (debian-cloud-images: SYSTEM_BOOT + GENERIC classes), less ssh, sudo and apt tooling.
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",  # logind (power button), hostnamed (cloud-init's hostname), resolved
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "grub-pc-bin",  # GRUB's i386-pc modules, boot.img, core image tools
    "cloud-init",
    "netplan.io",
    "systemd-resolved",
    "iproute2",
    "e2fsprogs",
    "python3",
)
SUITES = (
    f"deb {DEBIAN_MIRROR} bookworm main",
    f"deb {DEBIAN_MIRROR} bookworm-updates main",
    f"deb {DEBIAN_SECURITY} bookworm-security main",
)
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)

DISK_BYTES = 2 << 30  # the guest-visible disk
PART_START = 2048  # sectors: the root partition starts at 1 MiB (GRUB's core.img before it)
SECTOR = 512
# The root file system's UUID: fixed, so grub.cfg and fstab need no probing
ROOT_UUID = "6a0f7c3e-5b1d-4e8a-9c2f-3d7e1b5a9f40"
# debian-cloud-images' ext4 feature list for bookworm (GRUB 2.06 reads all of them)
EXT4_FEATURES = (
    "none,sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr,has_journal,"
    "extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize"
)
DEBIAN_CMDLINE = f"root=UUID={ROOT_UUID} ro console=ttyS0,115200 panic=-1"
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2")  # enough to find /boot/grub

MMDEBSTRAP_TIMEOUT_S = 1500
STEP_TIMEOUT_S = 600
RECIPE = "1"  # bump to force a rebuild when something outside this file changes

# GRUB's boot.img (include/grub/i386/pc/boot.h): LBA of core.img's first sector at
# 0x5c, the "trust the BIOS drive number only if it is a hard disk" jump at 0x66.
BOOT_KERNEL_SECTOR = 0x5C
BOOT_DRIVE_CHECK = 0x66
MBR_CODE_END = 440

FSTAB = f"UUID={ROOT_UUID} / ext4 rw,discard,errors=remount-ro 0 1\n"
# As the cloud images (debian-cloud-images SYSTEM_BOOT): resolved's full resolv.conf
RESOLV_LINK = "../run/systemd/resolve/resolv.conf"


@dataclass(frozen=True, slots=True)
class DebianImage:
    """A built Debian guest disk: attach ``disk`` (qcow2) and boot from firmware."""

    disk: Path
    kernel_version: str
    cmdline: str
    packages: dict[str, str]  # every installed package and its version
    directory: Path


def _key() -> str:
    return _digest(
        [
            RECIPE.encode(),
            Path(__file__).read_bytes(),
            "\n".join(PACKAGES).encode(),
            "\n".join(SUITES).encode(),
        ]
    )


def _grub_cfg(kernel_version: str) -> str:
    return f"""\
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
echo "VLD-GRUB linux {kernel_version}"
linux /boot/vmlinuz-{kernel_version} {DEBIAN_CMDLINE}
initrd /boot/initrd.img-{kernel_version}
boot
"""


def _mmdebstrap(root: Path) -> None:
    argv = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
        "--aptopt=APT::Install-Recommends \"false\"",
        *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
        f"--include={','.join(PACKAGES)}",
        "bookworm", str(root), *SUITES,
    ]  # fmt: skip
    _run(argv, cwd=root.parent, timeout=MMDEBSTRAP_TIMEOUT_S, what="mmdebstrap (bookworm)")


def _finish_tree(root: Path) -> str:
    """Configure the unpacked tree as a cloud image; returns the kernel version."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"{root}/boot holds {len(kernels)} kernels")
    version = kernels[0].name.removeprefix("vmlinuz-")
    if not (root / "boot" / f"initrd.img-{version}").is_file():
        raise GuestBuildError(f"no initramfs for {version} in {root}/boot")
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text("localhost\n")  # cloud-init sets the real one
    (root / "etc/machine-id").write_text("")  # a new one on first boot
    # As the cloud images: C.UTF-8 needs no generated locale, so cloud-init's locale
    # module finds it set (otherwise it runs update-locale for en_US.UTF-8 and fails)
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to(RESOLV_LINK)
    for stale in ("var/lib/dbus/machine-id",):
        (root / stale).unlink(missing_ok=True)
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    _run(
        ["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"],
        cwd=root,
        timeout=STEP_TIMEOUT_S,
        what="systemctl enable systemd-networkd",
    )
    grub = root / "boot/grub"
    shutil.copytree(root / "usr/lib/grub/i386-pc", grub / "i386-pc", dirs_exist_ok=True)
    (grub / "grub.cfg").write_text(_grub_cfg(version))
    _run(
        [
            "chroot", str(root), "grub-mkimage", "--format=i386-pc",
            "--output=/boot/grub/i386-pc/core.img", "--prefix=(hd0,msdos1)/boot/grub",
            *GRUB_MODULES,
        ],
        cwd=root, timeout=STEP_TIMEOUT_S, what="grub-mkimage",
    )  # fmt: skip
    return version


def _mbr(boot_img: bytes, disk_sectors: int, signature: int) -> bytes:
    if len(boot_img) != SECTOR:
        raise GuestBuildError(f"GRUB boot.img is {len(boot_img)} bytes, not {SECTOR}")
    mbr = bytearray(SECTOR)
    mbr[:MBR_CODE_END] = boot_img[:MBR_CODE_END]
    struct.pack_into("<Q", mbr, BOOT_KERNEL_SECTOR, 1)  # core.img starts at LBA 1
    mbr[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    struct.pack_into("<I", mbr, MBR_CODE_END, signature)
    count = disk_sectors - PART_START
    # partition 1: bootable, Linux (0x83), CHS fields at their "use LBA" maximum
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        PART_START, count)  # fmt: skip
    mbr[446 : 446 + 16] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _assemble(root: Path, raw: Path) -> None:
    """Root file system at 1 MiB, GRUB in the MBR and the sectors after it."""
    with raw.open("wb") as f:
        f.truncate(DISK_BYTES)
    fs_kib = (DISK_BYTES - PART_START * SECTOR) // 1024
    _run(
        [
            "mkfs.ext4", "-q", "-F", "-O", EXT4_FEATURES, "-U", ROOT_UUID, "-L", "root",
            "-E", f"offset={PART_START * SECTOR}", "-d", str(root), str(raw), f"{fs_kib}k",
        ],
        cwd=raw.parent, timeout=STEP_TIMEOUT_S, what="mkfs.ext4 -d",
    )  # fmt: skip
    boot_img = (root / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    core_img = (root / "boot/grub/i386-pc/core.img").read_bytes()
    if len(core_img) > (PART_START - 1) * SECTOR:
        raise GuestBuildError(f"GRUB core.img ({len(core_img)} bytes) does not fit before 1 MiB")
    signature = int.from_bytes(uuid.UUID(ROOT_UUID).bytes[:4], "little")
    with raw.open("r+b") as f:
        f.write(_mbr(boot_img, DISK_BYTES // SECTOR, signature))
        f.write(core_img)


def _packages(root: Path) -> dict[str, str]:
    out = _run(
        ["chroot", str(root), "dpkg-query", "-W", "-f=${Package}\t${Version}\n"],
        cwd=root,
        timeout=STEP_TIMEOUT_S,
        what="dpkg-query",
    )
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def _build(final: Path) -> None:
    if os.geteuid() != 0:
        raise GuestBuildError("building the Debian guest needs root (mmdebstrap --mode=root)")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        root = work / "root"
        started = time.monotonic()
        _mmdebstrap(root)
        version = _finish_tree(root)
        packages = _packages(root)
        stage = work / "out"
        stage.mkdir()
        raw = work / "disk.raw"
        _assemble(root, raw)
        _run(
            ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw),
             str(stage / "disk.qcow2")],
            cwd=work, timeout=STEP_TIMEOUT_S, what="qemu-img convert",
        )  # fmt: skip
        meta = {
            "kernel_version": version,
            "cmdline": DEBIAN_CMDLINE,
            "disk_bytes": DISK_BYTES,
            "build_seconds": round(time.monotonic() - started, 1),
            "packages": packages,
        }
        (stage / "debian.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        stage.rename(final)


def ensure_debian_guest() -> DebianImage:
    """The cached Debian guest disk, building it (a few minutes, root) if needed."""
    root = cache_root()
    final = root / "debian" / _key()
    meta_file = final / "debian.json"
    if not meta_file.is_file():
        with _locked(root / "debian.lock"):
            if not meta_file.is_file():
                _build(final)
    meta = json.loads(meta_file.read_text())
    return DebianImage(
        disk=final / "disk.qcow2",
        kernel_version=str(meta["kernel_version"]),
        cmdline=str(meta["cmdline"]),
        packages={str(k): str(v) for k, v in meta["packages"].items()},
        directory=final,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or reuse) the Debian guest and print its path, size and build time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="drop the cached build first")
    args = parser.parse_args(argv)
    if args.force:
        shutil.rmtree(cache_root() / "debian" / _key(), ignore_errors=True)
    started = time.monotonic()
    image = ensure_debian_guest()
    wanted = ("cloud-init", "netplan.io", "systemd", "linux-image-cloud-amd64", "grub-pc-bin")
    print(
        json.dumps(
            {
                "disk": str(image.disk),
                "disk_mib": round(image.disk.stat().st_size / (1 << 20), 1),
                "kernel_version": image.kernel_version,
                "packages": {p: image.packages.get(p) for p in wanted},
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Builds the tiny test guest (Debian cloud kernel + static busybox initramfs), cached.

Provides ``ensure_guest() -> GuestImage`` (kernel, initrd, kernel command line) for the
e2e tests, benchmarks and the demo, and ``ensure_busybox() -> Path`` (a static busybox
with ``udhcpc6``, which Debian's own busybox lacks) for tests that want that client on
the host. Nothing is installed on the host and no image is committed: the kernel package
is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``; busybox is built
from Debian's source package. Apt runs with a private configuration (its own
sources.list with ``deb``/``deb-src`` lines and its own lists directory) under the cache,
so the host's apt setup is not touched.

Results live in ``$VIRT_LAUNCHER_CACHE/guest/<hash>/`` (default
``~/.cache/virt-launcher``), the hash covering every input file of the recipe; builds
run under a file lock and are moved into place atomically, so parallel test runs share
one build. ``python -m testbed.guest.build [--force]`` builds and prints the paths.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GuestImage",
    "ensure_guest",
    "ensure_busybox",
    "GuestBuildError",
    "cache_root",
    "DEFAULT_CMDLINE",
    "ensure_nic_guest",
]

HERE = Path(__file__).resolve().parent
ROOTFS = HERE / "rootfs"

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_SOURCE_PACKAGE = "busybox"

# Debian's static busybox config plus the DHCPv6 client (and its option decoders).
BUSYBOX_CONFIG_BASE = "debian/config/pkg/static"
BUSYBOX_CONFIG_SET = (
    "CONFIG_UDHCPC6",
    "CONFIG_FEATURE_UDHCPC6_RFC3646",
    "CONFIG_FEATURE_UDHCPC6_RFC4704",
    "CONFIG_FEATURE_UDHCPC6_RFC4833",
    "CONFIG_FEATURE_UDHCPC6_RFC5970",
)
BUSYBOX_RECIPE = "2"  # bump to force a busybox rebuild when the recipe changes
# busybox 1.35 udhcpc6 exports the IAADDR/IAPREFIX valid lifetime ("lease",
# "ipv6prefix_lease") in network byte order (3600 shows as 269352960): add the ntohl.
BUSYBOX_PATCHES = (
    (
        "networking/udhcp/d6_dhcpc.c",
        '*new_env() = xasprintf("lease=%u", (unsigned)v32);',
        '*new_env() = xasprintf("lease=%u", (unsigned)ntohl(v32));',
    ),
    (
        "networking/udhcp/d6_dhcpc.c",
        '*new_env() = xasprintf("ipv6prefix_lease=%u", (unsigned)v32);',
        '*new_env() = xasprintf("ipv6prefix_lease=%u", (unsigned)ntohl(v32));',
    ),
)

# Modules the guest loads (their dependencies are added from each module's modinfo):
# virtio NICs and disks, a virtio-scsi CD-ROM with ISO 9660 (cloud-init NoCloud),
# and the ACPI power button with evdev so busybox acpid sees KEY_POWER.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sr_mod",
    "isofs",
    "button",
    "evdev",
)

KERNEL_RECIPE = "1"  # bump to force a new kernel download and module extraction

DEFAULT_CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1"

APT_TIMEOUT_S = 600
MAKE_TIMEOUT_S = 1800
LOCK_TIMEOUT_S = 2400


class GuestBuildError(RuntimeError):
    """The guest or busybox could not be built; the message names the failing step."""


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built guest: boot it with ``-kernel kernel -initrd initrd -append cmdline``."""

    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str
    busybox: Path
    directory: Path


def cache_root() -> Path:
    """``$VIRT_LAUNCHER_CACHE`` or ``~/.cache/virt-launcher``."""
    env = os.environ.get("VIRT_LAUNCHER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "virt-launcher"


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def _busybox_key() -> str:
    return _digest(
        [
            BUSYBOX_RECIPE.encode(),
            BUSYBOX_SOURCE_PACKAGE.encode(),
            BUSYBOX_CONFIG_BASE.encode(),
            "\n".join(BUSYBOX_CONFIG_SET).encode(),
            repr(BUSYBOX_PATCHES).encode(),
        ]
    )


def _kernel_key() -> str:
    return _digest(
        [KERNEL_RECIPE.encode(), KERNEL_META_PACKAGE.encode(), "\n".join(GUEST_MODULES).encode()]
    )


def _rootfs_files() -> list[Path]:
    return sorted(p for p in ROOTFS.rglob("*") if p.is_file())


def _guest_key() -> str:
    parts = [
        _busybox_key().encode(),
        _kernel_key().encode(),
        DEFAULT_CMDLINE.encode(),
        Path(__file__).read_bytes(),
    ]
    for path in _rootfs_files():
        parts.append(str(path.relative_to(ROOTFS)).encode())
        parts.append(path.read_bytes())
    return _digest(parts)


def _run(argv: list[str], *, cwd: Path, timeout: float, what: str) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise GuestBuildError(f"{what} did not finish within {timeout:.0f} s") from err
    except FileNotFoundError as err:
        raise GuestBuildError(f"{what} failed: {argv[0]!r} is not installed") from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise GuestBuildError(f"{what} exited with {done.returncode}: " + " | ".join(tail))
    return done.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GuestBuildError(
                        f"lock {path} still held after {LOCK_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Apt:
    """apt-get with a private sources.list, lists and cache under the build cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._updated = False

    def _options(self) -> list[str]:
        return [
            "-o",
            f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=/nonexistent",
            "-o",
            f"Dir::State::Lists={self.root / 'lists'}",
            "-o",
            f"Dir::Cache={self.root / 'cache'}",
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "APT::Sandbox::User=root",
            "-q",
        ]

    def update(self) -> None:
        if self._updated:
            return
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        signed = f"[signed-by={DEBIAN_KEYRING}]"
        lines = []
        for kind in ("deb", "deb-src"):
            lines.append(f"{kind} {signed} {DEBIAN_MIRROR} bookworm main")
            lines.append(f"{kind} {signed} {DEBIAN_MIRROR} bookworm-updates main")
            lines.append(f"{kind} {signed} {DEBIAN_SECURITY} bookworm-security main")
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")
        _run(
            ["apt-get", *self._options(), "update"],
            cwd=self.root,
            timeout=APT_TIMEOUT_S,
            what="apt-get update (private bookworm lists)",
        )
        self._updated = True

    def download(self, package: str, dest: Path) -> Path:
        self.update()
        before = set(dest.glob("*.deb"))
        _run(
            ["apt-get", *self._options(), "download", package],
            cwd=dest,
            timeout=APT_TIMEOUT_S,
            what=f"apt-get download {package}",
        )
        new = sorted(set(dest.glob(f"{package}_*.deb")) - before)
        if len(new) != 1:
            raise GuestBuildError(f"apt-get download {package} produced {len(new)} .deb files")
        return new[0]

    def source(self, package: str, dest: Path) -> Path:
        self.update()
        _run(
            ["apt-get", *self._options(), "source", "--download-only", package],
            cwd=dest,
            timeout=APT_TIMEOUT_S,
            what=f"apt-get source {package}",
        )
        dscs = sorted(dest.glob(f"{package}_*.dsc"))
        if len(dscs) != 1:
            raise GuestBuildError(f"apt-get source {package} produced {len(dscs)} .dsc files")
        return dscs[0]


def _build_busybox(apt: _Apt, work: Path) -> Path:
    dsc = apt.source(BUSYBOX_SOURCE_PACKAGE, work)
    src = work / "busybox-src"
    _run(
        ["dpkg-source", "--no-check", "-x", dsc.name, src.name],
        cwd=work,
        timeout=APT_TIMEOUT_S,
        what=f"dpkg-source -x {dsc.name}",
    )
    for rel, before, after in BUSYBOX_PATCHES:
        target = src / rel
        text = target.read_text()
        if text.count(before) != 1:
            raise GuestBuildError(f"busybox patch for {rel} does not apply: {before!r}")
        target.write_text(text.replace(before, after))
    config = (src / BUSYBOX_CONFIG_BASE).read_text().splitlines()
    wanted = set(BUSYBOX_CONFIG_SET)
    out = []
    for line in config:
        name = line.removeprefix("# ").split("=")[0].split(" ")[0]
        out.append(f"{name}=y" if name in wanted else line)
    missing = wanted - {line.split("=")[0] for line in out}
    out.extend(f"{name}=y" for name in sorted(missing))
    (src / ".config").write_text("\n".join(out) + "\n")
    try:
        subprocess.run(
            ["make", "oldconfig"],
            cwd=src,
            input="\n" * 500,
            capture_output=True,
            text=True,
            timeout=MAKE_TIMEOUT_S,
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise GuestBuildError(f"busybox make oldconfig failed in {src}") from err
    final = (src / ".config").read_text().splitlines()
    for name in BUSYBOX_CONFIG_SET:
        if f"{name}=y" not in final:
            raise GuestBuildError(f"busybox config lost {name}=y after make oldconfig")
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    _run(
        ["make", f"-j{jobs}", "busybox"],
        cwd=src,
        timeout=MAKE_TIMEOUT_S,
        what="busybox make",
    )
    return src / "busybox"


def ensure_busybox() -> Path:
    """Path of the cached static busybox (with udhcpc6), building it if needed."""
    root = cache_root()
    final = root / "busybox" / _busybox_key()
    binary = final / "busybox"
    if binary.is_file():
        return binary
    with _locked(root / "busybox.lock"):
        if binary.is_file():
            return binary
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
            work = Path(tmp)
            built = _build_busybox(_Apt(root / "apt"), work)
            stage = work / "out"
            stage.mkdir()
            shutil.copy2(built, stage / "busybox")
            applets = _run(
                [str(stage / "busybox"), "--list"], cwd=work, timeout=30, what="busybox --list"
            )
            if "udhcpc6" not in applets.split():
                raise GuestBuildError(f"built busybox {built} has no udhcpc6 applet")
            (stage / "applets").write_text(applets)
            if final.exists():
                shutil.rmtree(final)
            stage.rename(final)
    return binary


# --- kernel ------------------------------------------------------------------------


def _deb_field(deb: Path, field: str) -> str:
    return _run(
        ["dpkg-deb", "-f", str(deb), field], cwd=deb.parent, timeout=60, what="dpkg-deb -f"
    ).strip()


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    marker = b"\0depends="
    at = data.find(marker)
    if at < 0:
        return []
    end = data.index(b"\0", at + len(marker))
    text = data[at + len(marker) : end].decode()
    return [d for d in text.split(",") if d]


def _module_order(modroot: Path, names: tuple[str, ...] = GUEST_MODULES) -> list[Path]:
    """Kernel modules for ``names`` plus dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for ko in modroot.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, depth: int) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        if depth > 32:
            raise GuestBuildError(f"module dependency chain through {name!r} is too deep")
        ko = index.get(key)
        if ko is None:
            raise GuestBuildError(f"kernel module {name!r} is not in {modroot}")
        for dep in _modinfo_depends(ko):
            visit(dep, depth + 1)
        seen.add(key)
        order.append(ko)

    for name in names:
        visit(name, 0)
    return order


def _fetch_kernel(
    apt: _Apt,
    work: Path,
    package: str = KERNEL_META_PACKAGE,
    names: tuple[str, ...] = GUEST_MODULES,
) -> tuple[Path, str, list[Path]]:
    meta = apt.download(package, work)
    depends = _deb_field(meta, "Depends")
    image_pkg = next(
        (d.split()[0] for d in depends.split(",") if d.strip().startswith("linux-image-")),
        None,
    )
    if image_pkg is None:
        raise GuestBuildError(f"{package} depends on no linux-image: {depends!r}")
    deb = apt.download(image_pkg, work)
    tree = work / "kernel-tree"
    _run(
        ["dpkg-deb", "-x", str(deb), str(tree)], cwd=work, timeout=APT_TIMEOUT_S, what="dpkg-deb -x"
    )
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        raise GuestBuildError(f"{deb.name} holds {len(vmlinuz)} vmlinuz files")
    version = vmlinuz[0].name.removeprefix("vmlinuz-")
    modroot = tree / "lib" / "modules" / version
    return vmlinuz[0], version, _module_order(modroot, names)


# --- initramfs (newc cpio, written here so device nodes need no mknod) --------------


class _Cpio:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        fields = [
            self.ino,
            mode,
            0,  # uid
            0,  # gid
            1,  # nlink
            0,  # mtime: fixed, so identical inputs give identical images
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(name) + 1,
            0,
        ]
        self.ino += 1
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data
        blob += b"\0" * (-len(blob) % 4)
        self.chunks.append(blob)

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.chunks)


def _initramfs(busybox: Path, applets: list[str], modules: list[Path]) -> bytes:
    cpio = _Cpio()
    made = ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "run", "tmp", "mnt"]
    for d in made:
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1, 0o600)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in sorted(set(applets) - {"busybox"}):
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.symlink("sbin", "bin")
    cpio.symlink("usr", ".")
    names = []
    for ko in modules:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes(), 0o644)
        names.append(ko.name)
    cpio.file("etc/modules", ("\n".join(names) + "\n").encode(), 0o644)
    for path in _rootfs_files():
        rel = path.relative_to(ROOTFS)
        for parent in reversed(rel.parents[:-1]):
            if str(parent) not in made:
                cpio.directory(str(parent))
                made.append(str(parent))
        perm = 0o755 if os.access(path, os.X_OK) else 0o644
        cpio.file(str(rel), path.read_bytes(), perm)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def ensure_guest() -> GuestImage:
    """The cached guest image, building kernel extraction and initramfs if needed."""
    busybox = ensure_busybox()
    root = cache_root()
    final = root / "guest" / _guest_key()
    meta_file = final / "guest.json"
    if not meta_file.is_file():
        with _locked(root / "guest.lock"):
            if not meta_file.is_file():
                _build_guest(root, final, busybox)
    meta = json.loads(meta_file.read_text())
    return GuestImage(
        kernel=final / "vmlinuz",
        initrd=final / "initrd.gz",
        cmdline=DEFAULT_CMDLINE,
        kernel_version=str(meta["kernel_version"]),
        busybox=busybox,
        directory=final,
    )


def _ensure_kernel(root: Path, nic_models: bool = False) -> tuple[Path, str, list[Path]]:
    """The cached kernel: vmlinuz, its version, the modules in load order."""
    final = root / "kernel" / (_nic_kernel_key() if nic_models else _kernel_key())
    meta_file = final / "kernel.json"
    if not meta_file.is_file():
        with _locked(root / "kernel.lock"):
            if not meta_file.is_file():
                final.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
                    work = Path(tmp)
                    vmlinuz, version, modules = _fetch_kernel(
                        _Apt(root / "apt"), work, *(_NIC_KERNEL if nic_models else ())
                    )
                    stage = work / "out"
                    (stage / "modules").mkdir(parents=True)
                    shutil.copy2(vmlinuz, stage / "vmlinuz")
                    for ko in modules:
                        shutil.copy2(ko, stage / "modules" / ko.name)
                    meta = {"kernel_version": version, "modules": [m.name for m in modules]}
                    (stage / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
                    if final.exists():
                        shutil.rmtree(final)
                    stage.rename(final)
    meta = json.loads(meta_file.read_text())
    names = [str(n) for n in meta["modules"]]
    return final / "vmlinuz", str(meta["kernel_version"]), [final / "modules" / n for n in names]


def _build_guest(root: Path, final: Path, busybox: Path, nic_models: bool = False) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    applets = (busybox.parent / "applets").read_text().split()
    vmlinuz, version, modules = _ensure_kernel(root, nic_models)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        stage = work / "out"
        stage.mkdir()
        shutil.copy2(vmlinuz, stage / "vmlinuz")
        (stage / "initrd.gz").write_bytes(_initramfs(busybox, applets, modules))
        meta = {
            "kernel_version": version,
            "modules": [m.name for m in modules],
            "cmdline": DEFAULT_CMDLINE,
        }
        (stage / "guest.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        stage.rename(final)


# --- NIC-model guest (issue 18) --------------------------------------------------------
# Debian's cloud kernel has no driver for any emulated NIC but virtio. The NIC-model guest
# is the same initramfs (busybox, rootfs/, init) on Debian's generic kernel, plus the
# drivers of every NIC model QEMU emulates for the spec: e1000, e1000e, igb, rtl8139
# (8139too, 8139cp), ne2k_pci (ne2k-pci), pcnet (pcnet32). Cached like the default guest
# under its own keys; tests/e2e/test_nic_models.py boots it (docs/guest.md).
NIC_KERNEL_META_PACKAGE = "linux-image-amd64"
NIC_DRIVER_MODULES = ("e1000", "e1000e", "igb", "8139too", "8139cp", "ne2k_pci", "pcnet32")
NIC_KERNEL_RECIPE = "1"
_NIC_KERNEL = (NIC_KERNEL_META_PACKAGE, GUEST_MODULES + NIC_DRIVER_MODULES)


def _nic_kernel_key() -> str:
    return _digest(
        [
            NIC_KERNEL_RECIPE.encode(),
            NIC_KERNEL_META_PACKAGE.encode(),
            "\n".join(_NIC_KERNEL[1]).encode(),
        ]
    )


def ensure_nic_guest() -> GuestImage:
    """The cached NIC-model guest (generic kernel + emulated-NIC drivers), built if needed."""
    busybox = ensure_busybox()
    root = cache_root()
    final = root / "guest" / f"nic-{_digest([_guest_key().encode(), _nic_kernel_key().encode()])}"
    meta_file = final / "guest.json"
    if not meta_file.is_file():
        with _locked(root / "guest.lock"):
            if not meta_file.is_file():
                _build_guest(root, final, busybox, nic_models=True)
    meta = json.loads(meta_file.read_text())
    return GuestImage(
        kernel=final / "vmlinuz",
        initrd=final / "initrd.gz",
        cmdline=DEFAULT_CMDLINE,
        kernel_version=str(meta["kernel_version"]),
        busybox=busybox,
        directory=final,
    )


# --- end of the NIC-model guest block -------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or reuse) the guest and print its paths and build time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="drop cached builds first")
    parser.add_argument("--busybox-only", action="store_true", help="only build busybox")
    args = parser.parse_args(argv)
    if args.force:
        for sub in ("busybox", "kernel", "guest"):
            shutil.rmtree(cache_root() / sub, ignore_errors=True)
    started = time.monotonic()
    if args.busybox_only:
        print(json.dumps({"busybox": str(ensure_busybox())}))
    else:
        image = ensure_guest()
        print(
            json.dumps(
                {
                    "kernel": str(image.kernel),
                    "initrd": str(image.initrd),
                    "cmdline": image.cmdline,
                    "kernel_version": image.kernel_version,
                    "busybox": str(image.busybox),
                }
            )
        )
    print(json.dumps({"seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

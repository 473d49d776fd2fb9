"""The few qcow2 operations the launcher needs: write an empty overlay, read a header.

Called by :func:`launcher.volumes.prepare`, which gives every writable ``containerDisk``
a copy-on-write overlay in the state dir (docs/volumes.md): the guest writes into the
overlay and the image in the pod's volume is only ever read. Written here rather than
with ``qemu-img create -f qcow2 -b IMAGE -F FMT OVERLAY`` because the pod image has no
qemu-img (cloud-hypervisor pods have no QEMU at all) and a process spawn would cost the
start-up path tens of milliseconds. The layout is the one qemu-img 7.2 makes for that
command (header, refcount table, refcount block, L1 table in clusters 0-3), less its
optional feature-name table; tests/unit/test_qcow2.py checks it with ``qemu-img
info/check`` and ``qemu-io`` reads and writes.

Layout of the overlay (qcow2 version 3, 64 KiB clusters, 16-bit refcounts;
QEMU's docs/interop/qcow2.txt)::

    cluster 0   header (112 bytes), backing-format extension, end marker, backing file name
    cluster 1   refcount table: one entry, pointing at cluster 2
    cluster 2   refcount block: clusters 0 .. 3+L1-1 have refcount 1
    cluster 3…  L1 table, all zero: nothing is allocated, every read goes to the backing file

:func:`read_header` reads back what a restarted launcher needs to decide whether an
overlay it finds still belongs to the image (backing path and format, virtual size).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAGIC", "Qcow2Header", "create_overlay", "read_header", "virtual_size"]

MAGIC = b"QFI\xfb"
VERSION = 3
CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
REFCOUNT_ORDER = 4  # 16-bit refcounts
HEADER_LENGTH = 112  # v3 header with the compression-type byte (zlib) and padding
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_END = 0
MAX_BACKING_NAME = 1023  # QEMU refuses longer backing file names
MAX_SIZE = 1 << 50  # refuse absurd sizes before computing tables for them
FORMATS = ("raw", "qcow2")

# magic, version, backing offset, backing size, cluster bits, size, crypt method, L1 size,
# L1 offset, refcount table offset, refcount table clusters, snapshots, snapshots offset,
# incompatible, compatible, autoclear features, refcount order, header length
_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    """The fields of a qcow2 header the launcher looks at."""

    version: int
    size: int  # virtual size in bytes
    backing_file: str | None
    backing_format: str | None


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def create_overlay(path: Path, backing: str, backing_format: str, size: int) -> None:
    """Write an empty qcow2 overlay at ``path`` backed by ``backing`` (``raw``/``qcow2``).

    ``size`` is the guest-visible size (the backing image's virtual size). The file is
    written to a temporary name beside ``path`` and renamed, so a crash never leaves a
    half-written overlay. Raises ``ValueError`` for a format, size or name qcow2 cannot
    carry and ``OSError`` when the file cannot be written.
    """
    if backing_format not in FORMATS:
        raise ValueError(f"backing format {backing_format!r} is not one of {', '.join(FORMATS)}")
    if not 0 < size <= MAX_SIZE:
        raise ValueError(f"virtual size {size} is not between 1 byte and {MAX_SIZE} bytes")
    name = os.fsencode(backing)
    if not 0 < len(name) <= MAX_BACKING_NAME:
        raise ValueError(f"backing file name {backing!r} is not 1-{MAX_BACKING_NAME} bytes long")
    l2_entries = CLUSTER // 8
    l1_size = -(-size // (CLUSTER * l2_entries))
    l1_clusters = -(-(l1_size * 8) // CLUSTER)
    refcount_table, refcount_block, l1_table = CLUSTER, 2 * CLUSTER, 3 * CLUSTER
    used_clusters = 3 + l1_clusters

    extensions = struct.pack(">II", EXT_BACKING_FORMAT, len(backing_format))
    extensions += _pad8(backing_format.encode()) + struct.pack(">II", EXT_END, 0)
    backing_offset = HEADER_LENGTH + len(extensions)
    if backing_offset + len(name) > CLUSTER:
        raise ValueError(f"backing file name {backing!r} does not fit in the header cluster")
    header = _HEADER.pack(
        MAGIC, VERSION, backing_offset, len(name), CLUSTER_BITS, size, 0, l1_size,
        l1_table, refcount_table, 1, 0, 0, 0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH,
    )  # fmt: skip
    header += b"\0" * (HEADER_LENGTH - len(header))  # compression type 0 (zlib) + padding

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(header + extensions + name)
            f.seek(refcount_table)
            f.write(struct.pack(">Q", refcount_block))
            f.seek(refcount_block)
            f.write(struct.pack(">H", 1) * used_clusters)
            f.truncate(used_clusters * CLUSTER)  # the L1 table: zeros
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_header(path: Path) -> Qcow2Header:
    """The version, virtual size and backing file of the qcow2 image at ``path``.

    Raises ``ValueError`` when the file is not a qcow2 image (or is cut short) and
    ``OSError`` when it cannot be read.
    """
    with path.open("rb") as f:
        head = f.read(CLUSTER)
    if len(head) < 72 or head[:4] != MAGIC:
        raise ValueError(f"{path} is not a qcow2 image")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    (size,) = struct.unpack_from(">Q", head, 24)
    backing = None
    if backing_offset:
        raw = head[backing_offset : backing_offset + backing_size]
        if len(raw) != backing_size:
            raise ValueError(f"{path}: the backing file name lies outside the header cluster")
        backing = os.fsdecode(raw)
    backing_format = None
    if version >= 3 and len(head) >= 104:
        (header_length,) = struct.unpack_from(">I", head, 100)
        at = header_length
        while at + 8 <= len(head):
            kind, length = struct.unpack_from(">II", head, at)
            if kind == EXT_END:
                break
            if kind == EXT_BACKING_FORMAT:
                backing_format = head[at + 8 : at + 8 + length].decode(errors="replace")
            at += 8 + length + (-length % 8)
    return Qcow2Header(version, size, backing, backing_format)


def virtual_size(path: Path, image_format: str) -> int:
    """The guest-visible size of an image: the header's size for qcow2, else the file's."""
    if image_format == "qcow2":
        return read_header(path).size
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)  # works for block devices too
    finally:
        os.close(fd)

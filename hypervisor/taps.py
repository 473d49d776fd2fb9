"""Creating a persistent tap, and opening an existing one as file descriptors for a VMM.

The launcher (which holds CAP_NET_ADMIN in the pod netns) creates the taps while applying
the network plan (:func:`create_tap`, called by ``launcher.network.netlink`` in the
netlink child: ``TUNSETIFF`` + ``TUNSETPERSIST``, as ``ip tuntap add`` does); the taps are
opened here, one ``/dev/net/tun`` fd per queue pair
(``TUNSETIFF`` with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``, plus ``IFF_MULTI_QUEUE`` when
the tap has several queues), and handed to the VMM (QEMU ``-netdev tap,fd=`` or QMP
``getfd``; cloud-hypervisor ``vm.add-net``), so the VMM needs no privilege for them.
Called by the launcher before the VMM starts (``launcher.run``), by the privileged
helper for hot plug (``launcher.privsep.helper``) and by
:mod:`hypervisor.cloud_hypervisor.adapter` (its default opener).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from hypervisor.errors import HypervisorError

__all__ = ["open_tap", "create_tap"]

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
_IFNAMSIZ = 16


def open_tap(name: str, queues: int = 1) -> list[int]:
    """Open tap ``name`` ``queues`` times; return the fds (the caller closes them).

    Raises HypervisorError naming the tap when an open or the ``TUNSETIFF`` ioctl fails
    (e.g. the tap's multi-queue flag does not match ``queues``).
    """
    if not name or len(name.encode()) >= _IFNAMSIZ:
        raise HypervisorError(f"tap name {name!r} is empty or longer than 15 bytes")
    if queues < 1:
        raise HypervisorError(f"tap {name!r} needs at least one queue, not {queues}")
    try:
        socket.if_nametoindex(name)  # TUNSETIFF would silently create a missing tap
    except OSError as err:
        raise HypervisorError(f"tap {name!r} does not exist in this network namespace") from err
    request = _request(name, queues > 1)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as err:
        for fd in fds:
            os.close(fd)
        raise HypervisorError(f"cannot open tap {name!r} with {queues} queue(s): {err}") from err
    return fds


def _request(name: str, multi_queue: bool) -> bytes:
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if multi_queue else 0)
    return struct.pack("16sH22x", name.encode(), flags)


def create_tap(name: str, multi_queue: bool) -> None:
    """Create the persistent tap ``name`` in the calling thread's netns (no packet info,
    vnet header; multiqueue when asked). Raises OSError from the open or an ioctl."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _request(name, multi_queue))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)

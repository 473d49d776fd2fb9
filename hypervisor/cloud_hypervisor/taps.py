"""``open_tap`` for cloud-hypervisor's ``vm.add-net``: the shared :mod:`hypervisor.taps`."""

from hypervisor.taps import open_tap

__all__ = ["open_tap"]

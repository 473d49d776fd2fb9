"""Hypervisor adapters: a neutral machine description, QEMU (QMP) and cloud-hypervisor (REST).

The composition root builds a :class:`hypervisor.machine.MachineConfig`, picks an adapter
(``hypervisor.qemu.Qemu`` or ``hypervisor.cloud_hypervisor``'s adapter) and drives it only
through the :class:`hypervisor.base.Hypervisor` protocol. Callers import those from their
modules: the package itself imports nothing, so the error types (``hypervisor.errors``,
which :mod:`launcher.errors` re-exports and the netlink child needs) come without the
machine model.
"""

__all__: list[str] = []

"""virt-launcher: the entrypoint process of a VM pod.

It loads the VM spec (``launcher.spec``), connects the pod network to the guest
(``launcher.network``), serves DHCP (``dhcp``), supervises the hypervisor
(``hypervisor``) and answers a local status endpoint (``launcher.status``).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

"""The test bed the tests, the benchmarks and the demo share: simulated pods and test guests.

Not part of the launcher (the image does not ship it); imported by ``tests/``, ``bench/``
and ``scripts/demo.sh`` from the repository root. ``bench/`` must not import ``tests``:
what both need lives here.

* :mod:`testbed.guest` builds and caches the tiny test guest (Debian's cloud kernel + a
  busybox initramfs) and parses its serial-console protocol;
* :mod:`testbed.harness` makes a simulated pod (a netns with ``eth0`` wired to a peer as
  a CNI leaves it), boots the guest under QEMU, runs dnsmasq as the peer DHCP server;
* :mod:`testbed.launch` starts ``virt-launcher run`` in a simulated pod with the test
  guest and stops it, bounded (the e2e tests' one launcher start);
* :mod:`testbed.netns` is the pod/peer/guest topology of the network integration tests
  and the network benchmark (``Topology``, ``nsrun``, servers and probes);
* :mod:`testbed.runner` is ``python -m testbed.runner``: discover → plan → apply in a
  subprocess, for the restart tests and the benchmark.

Import the modules directly; this package re-exports nothing, so ``python -m
testbed.guest.build`` runs cleanly.
"""

__all__: list[str] = []

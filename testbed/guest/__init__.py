"""The tiny test guest for e2e tests, benchmarks and the demo (see docs/guest.md).

``testbed.guest.build`` builds and caches it (``ensure_guest()``, ``ensure_busybox()``);
``testbed.guest.console`` parses its serial-console ``VL-*`` line protocol. Import those
modules directly; this package re-exports nothing so ``python -m testbed.guest.build`` runs
cleanly.
"""

__all__: list[str] = []

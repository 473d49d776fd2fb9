"""The tiny test guest: cached build (``build``) and serial-console line protocol (``console``).

Used by the e2e tests, the benchmarks and the demo; see docs/guest.md.
"""

from tests.guest.build import GuestImage, ensure_busybox, ensure_guest

__all__ = ["ensure_guest", "ensure_busybox", "GuestImage"]

"""``python -m dhcp``: see :mod:`dhcp.cli`."""

import sys

from dhcp.cli import main

sys.exit(main())

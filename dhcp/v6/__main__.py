"""``python -m dhcp.v6 serve``: the DHCPv6/RA half of ``python -m dhcp serve`` on its own."""

import sys

from dhcp.v6.cli import main

sys.exit(main())

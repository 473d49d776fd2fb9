"""``python -m launcher``: the same as the ``virt-launcher`` console script."""

from launcher.cli import main

raise SystemExit(main())

"""``python -m launcher``: the same as the ``virt-launcher`` console script."""

from launcher.entry import main

raise SystemExit(main())

"""``python -m consumers``: the ``invoice-sm`` command without the console script."""

from consumers.cli import main

raise SystemExit(main())

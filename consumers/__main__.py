"""``python -m consumers``: the ``invoice-sm`` command without the console script."""

# Before the (slow) imports of the command line: a SIGTERM during start-up
# becomes a clean stop (consumers/early_stop.py).
from consumers import early_stop

early_stop.install()

from consumers.cli import main  # noqa: E402 - after the signal handlers, on purpose

raise SystemExit(main())

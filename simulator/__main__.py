"""``python -m simulator``: see ``simulator.server.main``."""

import sys

from simulator.server import main

sys.exit(main())

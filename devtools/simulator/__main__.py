"""``python -m devtools.simulator`` (also ``python -m devtools wechat-sim``): see
``devtools.simulator.server.main``."""

import sys

from devtools.simulator.server import main

sys.exit(main())

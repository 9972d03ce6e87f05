"""``python -m devtools {demo,wechat-sim,diagram,kafka} [ARGS]``: the dev
command line. Each command keeps its own parser (``python -m devtools
COMMAND --help``); this only picks the command and hands it the rest of the
arguments as typed."""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: python -m devtools COMMAND [ARGS]

commands:
  demo        everything locally: broker, WeChat simulator, processor, deliverer, a sample stream, a summary
  wechat-sim  the WeChat simulator (tokens, updatestatus, faults, /_sim/ control API) until SIGTERM
  diagram     print, write (--write) or check (--check) the lifecycle state diagram
  kafka       local Kafka brokers from Maven Central jars: kafka fetch | kafka start [--nodes 3]
"""


def _demo(argv: list[str]) -> int:
    from devtools.demo import main

    return main(argv)


def _wechat_sim(argv: list[str]) -> int:
    from devtools.simulator.server import main

    return main(argv)


def _diagram(argv: list[str]) -> int:
    from devtools.diagram import main

    return main(argv)


def _kafka(argv: list[str]) -> int:
    from devtools.kafka_local import main

    return main(argv)


#: Imported lazily: ``diagram`` needs neither aiohttp nor the JVM helpers.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "demo": _demo,
    "wechat-sim": _wechat_sim,
    "diagram": _diagram,
    "kafka": _kafka,
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        sys.stdout.write(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"{USAGE}\npython -m devtools: unknown command {name!r}\n")
        return 2
    return COMMANDS[name](rest)


if __name__ == "__main__":
    sys.exit(main())

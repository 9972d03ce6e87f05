"""``python -m bench``: run the benchmark suites (``./dev bench`` does this).

    python -m bench                      # every suite, full sizes
    python -m bench --quick              # every suite, small sizes (a smoke run)
    python -m bench --only processor     # one suite (repeat or comma-separate for more)
    python -m bench --list               # the suites and their options
    python -m bench --bootstrap HOST:PORT   # use a running broker instead of starting one

A suite is a module ``bench/<name>.py`` named in ``SUITES`` that defines:

- ``run(ctx: bench.common.BenchContext) -> dict``: runs the suite, writes
  ``ctx.results_dir/<name>.json`` and ``.md`` with ``ctx.write_results`` (a
  ``--quick`` run writes ``<name>-quick.*`` instead, so a smoke run never
  overwrites full figures) and prints its table (``bench.common.print_table``);
  returns the results;
- optionally ``TITLE: str`` and ``add_arguments(parser)`` to add its own
  options (prefix them with the suite's name to avoid clashes).

``ctx.quick`` asks for small sizes; ``ctx.bootstrap()`` gives the shared
broker (started on first use, stopped at the end); ``ctx.workdir`` is a
scratch folder for state dirs and child logs; ``ctx.say()`` prints progress.
A suite that raises is reported and the others still run; the exit code is
1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from bench.common import RESULTS_DIR, BenchContext, bench_kafka

#: Suites in the order they run. Add yours here (module ``bench/<name>.py``).
SUITES: list[str] = ["processor", "deliverer", "replay", "cluster"]


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None  # listed but not written yet
        raise


def build_parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run invoice-sm benchmarks.")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help=f"run only these suites (of: {', '.join(modules)})"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="use this broker instead of starting a local one")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=f"where results go (default {RESULTS_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (state dirs, child logs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    for module in modules.values():
        add = getattr(module, "add_arguments", None)
        if add is not None:
            add(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    modules = {name: m for name in SUITES if (m := _load(name)) is not None}
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if args.list:
        for name, module in modules.items():
            print(f"{name}: {getattr(module, 'TITLE', (module.__doc__ or '').strip().splitlines()[0])}")
        missing = [name for name in SUITES if name not in modules]
        if missing:
            print(f"(listed but not present yet: {', '.join(missing)})")
        return 0
    wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(modules)
    unknown = [n for n in wanted if n not in modules]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(modules)}")

    from adapters.logging import configure_logging

    # Library code run in this process (restore_states, read_to_end) logs at
    # INFO; the suites' own progress lines are what a reader wants here.
    configure_logging("console", "WARNING", stream=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="invoice-sm-bench-"))
    failed: list[str] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:

        def start_broker() -> str:
            ctx.say("starting the benchmark broker (1 GiB heap, full JIT)")
            return stack.enter_context(bench_kafka(args.bootstrap))

        ctx = BenchContext(
            args=args,
            quick=args.quick,
            results_dir=args.results_dir,
            workdir=workdir,
            _bootstrap=args.bootstrap or start_broker,
            verbose=not args.quiet,
        )
        for name in wanted:
            t = time.perf_counter()
            ctx.say(f"suite {name}: start ({'quick' if args.quick else 'full'})")
            try:
                modules[name].run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 - a failed suite is reported and the others still run
                failed.append(name)
                traceback.print_exc()
                ctx.say(f"suite {name}: FAILED after {time.perf_counter() - t:.1f} s (scratch kept in {workdir})")
                args.keep = True
            else:
                ctx.say(f"suite {name}: done in {time.perf_counter() - t:.1f} s")
    if args.keep:
        print(f"scratch folder kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"bench: {len(wanted) - len(failed)}/{len(wanted)} suites ok in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

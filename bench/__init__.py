"""Benchmarks of invoice-sm, run with ``./dev bench`` or ``python -m bench``.

Each suite is a module ``bench/<name>.py`` listed in ``bench.__main__.SUITES``
(see the docstring there for the small protocol a suite follows). Shared
helpers (a benchmark broker, fast producers, unique names, child processes,
an RSS sampler, result files) live in :mod:`bench.common`.

Results go to ``bench/results/<suite>.json`` (every figure, parameters,
versions, the machine) and ``bench/results/<suite>.md`` (the table that is
also printed). The machine these run on is small and shared: suites measure
the things they compare side by side in one run and report ratios.
"""

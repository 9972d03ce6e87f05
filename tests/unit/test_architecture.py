"""domain/ stays pure: no imports of the outside world, no I/O.

Allowed beside the standard library: ``transitions`` (the lifecycle) and
``msgspec`` (its frozen Structs are the value types; it does no I/O)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "domain"
FORBIDDEN = {
    "adapters",
    "consumers",
    "devtools",
    "aiokafka",
    "httpx",
    "structlog",
    "aiohttp",
    "rocksdict",
    "socket",
    "asyncio",
    "subprocess",
    "requests",
    "prometheus_client",
}


@pytest.mark.parametrize("path", sorted(DOMAIN.glob("*.py")), ids=lambda p: p.name)
def test_domain_module_imports_nothing_from_the_outside(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {imported & FORBIDDEN}"


def test_domain_does_no_io() -> None:
    for path in DOMAIN.glob("*.py"):
        source = path.read_text()
        for call in ("open(", "print(", ".read_text(", ".write_text("):
            assert call not in source, f"{path.name} calls {call}"


# --------------------------------------------------------------------------
# the service does not reach into the developer tools
# --------------------------------------------------------------------------

REPO = DOMAIN.parent
#: The installed packages (pyproject's [tool.setuptools.packages.find]).
SERVICE_PACKAGES = ("domain", "adapters", "consumers", "schemas")
#: devtools/ is not installed: an import of it works from a checkout and
#: fails in the image. ``simulator`` and ``kafka_local`` are its old homes.
DEV_ONLY_MODULES = {"devtools", "simulator", "kafka_local", "adapters.kafka_local", "consumers.demo", "consumers.commands_ops"}


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module an import statement names, and every string that looks
    like a dotted module name (``importlib.import_module("x.y")``; a bare
    word such as a log name "simulator" is not taken for one)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            dotted = "." in node.value or node.value == "devtools"
            if dotted and all(part.isidentifier() for part in node.value.split(".")):
                names.add(node.value)
    return names


def _reaches_dev_only(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:n]) in DEV_ONLY_MODULES for n in range(1, len(parts) + 1))


SERVICE_FILES = sorted(path for package in SERVICE_PACKAGES for path in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", SERVICE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_service_module_imports_nothing_from_devtools(path: Path) -> None:
    reached = {m for m in _imported_modules(ast.parse(path.read_text())) if _reaches_dev_only(m)}
    assert not reached, f"{path.relative_to(REPO)} imports developer tooling {reached}: it is not installed"


def test_the_devtools_check_sees_an_import_of_devtools() -> None:
    # The check above must be able to fail: each way of reaching devtools is seen.
    for source in (
        "import devtools.simulator",
        "from devtools.kafka_local import LocalKafka",
        "from devtools import demo",
        "importlib.import_module('devtools.diagram')",
        "from simulator.state import DEFAULT_ACCOUNTS",
        "from adapters.kafka_local import LocalKafka",
    ):
        assert any(_reaches_dev_only(m) for m in _imported_modules(ast.parse(source))), source
    assert not any(_reaches_dev_only(m) for m in _imported_modules(ast.parse("from adapters import kafka, wechat_sim_client")))

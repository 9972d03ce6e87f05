"""domain/ stays pure: no imports of the outside world, no I/O.

Allowed beside the standard library: ``transitions`` (the lifecycle) and
``msgspec`` (its frozen Structs are the value types; it does no I/O)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "domain"
FORBIDDEN = {"adapters", "consumers", "simulator", "aiokafka", "httpx", "structlog", "aiohttp", "rocksdict",
             "socket", "asyncio", "subprocess", "requests", "prometheus_client"}


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

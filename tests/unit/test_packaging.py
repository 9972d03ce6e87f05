"""What is installed, and from what: the wheel holds the service packages and
none of the developer tools, and the lock files pin what pyproject.toml pins,
every package with hashes.

The wheel is built for real (``pip wheel --no-deps --no-build-isolation``,
with the locked setuptools of the environment, offline) from a copy of the
checkout that still has devtools/ and tools/ in it, so a package list that
picked them up would show here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SERVICE_LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
SERVICE_PACKAGES = {"domain", "adapters", "consumers", "schemas"}
#: Developer tooling that must never ship, by path fragment inside the wheel.
DEV_ONLY = ("devtools", "simulator", "kafka_local", "demo.py", "diagram.py")
#: Not copied for the build: environments, caches, results, and what has no
#: bearing on the package list.
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".cache",
    "__pycache__",
    "*.egg-info",
    "build",
    ".pytest_cache",
    ".hypothesis",
    "state",
    ".demo",
    "results",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    assert (source / "devtools" / "simulator").is_dir(), "the copy must hold devtools/ for the check to mean anything"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "--wheel-dir",
            str(work / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (work / "dist").glob("invoice_sm-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_exactly_the_service_packages(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == SERVICE_PACKAGES


def test_the_wheel_has_no_developer_tool(wheel: zipfile.ZipFile) -> None:
    shipped = [name for name in wheel.namelist() if any(part in name for part in DEV_ONLY)]
    assert shipped == []
    # The package schemas/ is data the service validates against; it must come along.
    assert any(name.startswith("schemas/") and name.endswith(".json") for name in wheel.namelist())


def test_the_only_console_script_is_the_service(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert re.findall(r"^(\S+) = (\S+)$", text, re.MULTILINE) == [("invoice-sm", "consumers.cli:main")]
    assert "devtools" not in text


# --------------------------------------------------------------------------
# lock files
# --------------------------------------------------------------------------


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in a hashed lock file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<rest>.*)", line)
        assert found, f"{path.name}: not an exact pin: {line[:120]}"
        hashes = re.findall(r"--hash=(sha256:[0-9a-f]{64})", found["rest"])
        leftover = re.sub(r"--hash=sha256:[0-9a-f]{64}", "", found["rest"]).strip()
        assert not leftover, f"{path.name}: {found['name']} has more than hashes: {leftover[:120]}"
        name = canonicalize_name(found["name"])
        assert name not in entries, f"{path.name}: {name} twice"
        entries[name] = (found["version"], hashes)
    return entries


@pytest.fixture(scope="module")
def service_lock() -> dict[str, tuple[str, list[str]]]:
    return _lock(SERVICE_LOCK)


@pytest.fixture(scope="module")
def dev_lock() -> dict[str, tuple[str, list[str]]]:
    return _lock(DEV_LOCK)


def _pins(requirements: list[str]) -> dict[str, str]:
    """name -> version of exact pins; anything else fails (the project pins exactly)."""
    pins: dict[str, str] = {}
    for text in requirements:
        requirement = Requirement(text)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"not an exact pin in pyproject.toml: {text}"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


SERVICE_PINS = _pins(PYPROJECT["project"]["dependencies"])
DEV_PINS = SERVICE_PINS | {
    name: version
    for extra in ("dev", "bench")
    for name, version in _pins(PYPROJECT["project"]["optional-dependencies"][extra]).items()
}


@pytest.mark.parametrize("lock_path", [SERVICE_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_locked_package_has_hashes(lock_path: Path) -> None:
    entries = _lock(lock_path)
    assert entries, f"{lock_path.name} is empty"
    unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
    assert unhashed == [], f"{lock_path.name}: no --hash for {unhashed}"


def test_the_service_lock_has_every_service_pin_at_its_version(service_lock: dict[str, tuple[str, list[str]]]) -> None:
    wrong = {
        name: (version, service_lock.get(name, ("missing",))[0])
        for name, version in SERVICE_PINS.items()
        if service_lock.get(name, ("",))[0] != version
    }
    assert wrong == {}, f"pyproject.toml pin vs requirements.lock (run ./dev lock): {wrong}"


def test_the_dev_lock_has_every_pin_at_its_version(dev_lock: dict[str, tuple[str, list[str]]]) -> None:
    wrong = {
        name: (version, dev_lock.get(name, ("missing",))[0])
        for name, version in DEV_PINS.items()
        if dev_lock.get(name, ("",))[0] != version
    }
    assert wrong == {}, f"pyproject.toml pin vs requirements-dev.lock (run ./dev lock): {wrong}"


def test_the_service_lock_holds_no_dev_only_pin(service_lock: dict[str, tuple[str, list[str]]]) -> None:
    # Pinned for dev or bench only, yet in the service lock: either the lock
    # was made with the extras, or a service package needs it, and then it is
    # a service dependency and belongs in [project] dependencies.
    dev_only = set(DEV_PINS) - set(SERVICE_PINS)
    assert dev_only, "no dev-only pin: the check checks nothing"
    assert sorted(dev_only & set(service_lock)) == []


def test_tests_run_the_versions_the_image_ships(
    service_lock: dict[str, tuple[str, list[str]]], dev_lock: dict[str, tuple[str, list[str]]]
) -> None:
    differ = {
        name: (v, dev_lock.get(name, ("missing",))[0])
        for name, (v, _) in service_lock.items()
        if dev_lock.get(name, ("",))[0] != v
    }
    assert differ == {}


@pytest.mark.parametrize("lock_path", [SERVICE_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_each_lock_builds_the_project_offline(lock_path: Path) -> None:
    """The build backend is locked (installs build with --no-build-isolation)
    at a version pyproject's build-system accepts; the project itself is not
    in the lock (``--require-hashes`` would look for it on the index)."""
    entries = _lock(lock_path)
    native = tomllib.loads((REPO / "native" / "pyproject.toml").read_text())
    for text in [*PYPROJECT["build-system"]["requires"], *native["build-system"]["requires"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{lock_path.name} lacks the build requirement {text}"
        locked = Version(entries[name][0])
        assert requirement.specifier.contains(locked), f"{lock_path.name}: {name} {locked} is not {text}"
    assert canonicalize_name(PYPROJECT["project"]["name"]) not in entries


def test_the_installs_use_the_locks_with_hashes() -> None:
    dev = (REPO / "dev").read_text()
    assert "DEV_LOCK=requirements-dev.lock" in dev and "LOCK=requirements.lock" in dev
    assert '--require-hashes -r "$DEV_LOCK"' in dev
    assert "--no-deps --no-build-isolation -e ." in dev
    # A lock change must reinstall: the stamp is a hash over the lock (and the native step's sources).
    assert re.search(r'^STAMP=.*"\$DEV_LOCK".*NATIVE_SOURCES.*sha1sum', dev, re.MULTILINE)
    assert "--no-deps --no-build-isolation ./native" in dev

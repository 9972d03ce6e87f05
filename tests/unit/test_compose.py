"""compose.yaml, the Dockerfile, deploy/prometheus.yml and Grafana's
provisioning under deploy/grafana/ stay in step with the code: real settings, real subcommands, the default topics, matching
ports. There is no Docker engine in CI, so the files are parsed, not run;
``python -m devtools wechat-sim``, which compose runs, is exercised for real."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import devtools.simulator.server
from adapters.settings import ENV_PREFIX, Settings, load_settings
from adapters.topics import topic_table
from consumers.cli import COMMANDS, build_parser
from devtools.__main__ import COMMANDS as DEV_COMMANDS
from devtools.__main__ import main as dev_main

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"kafka", "kafka-init", "wechat-sim", "processor", "deliverer", "reconcile", "node-exporter", "prometheus", "grafana"}
PROJECT_SERVICES = ("kafka-init", "wechat-sim", "processor", "deliverer", "reconcile")
#: Run from the service image; the simulator runs from the devtools image.
SERVICE_IMAGE_SERVICES = ("processor", "deliverer")
DEVTOOLS_SERVICES = ("wechat-sim",)
METRICS_SERVICES = ("processor", "deliverer")
#: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` (compose interpolation).
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _interpolate(value: str) -> str:
    """What compose would substitute with nothing set in the environment."""
    return SUBSTITUTION.sub(lambda m: m["default"] or "", value).replace("$$", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) of each published port (short syntax)."""
    result = []
    for spec in service.get("ports", []):
        *host, published, target = str(spec).split(":")
        result.append((host[0] if host else "0.0.0.0", int(published), int(target.split("/")[0])))
    return result


def _field(env_name: str) -> str:
    return env_name.removeprefix(ENV_PREFIX).lower()


def _metrics_port(service: dict[str, Any]) -> int:
    return int(_environment(service)["INVOICE_SM_METRICS_PORT"])


# --------------------------------------------------------------------------
# services and images
# --------------------------------------------------------------------------


def test_compose_defines_the_whole_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_kafka_is_the_official_image_as_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = _environment(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in env["KAFKA_LISTENERS"]
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert listeners == set(protocols)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("OFFSETS_TOPIC_REPLICATION_FACTOR", "TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[f"KAFKA_{name}"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_the_external_kafka_listener_is_the_published_port(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["kafka"])
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    external = [address for name, address in advertised.items() if address.startswith("localhost:")]
    assert len(external) == 1
    port = int(external[0].split(":")[1])
    assert (port, port) in {(published, target) for _, published, target in _ports(services["kafka"])}


def _build(service: dict[str, Any]) -> tuple[str, str | None]:
    """(context, target) of a service's build (short or long syntax)."""
    build = service["build"]
    return (build, None) if isinstance(build, str) else (str(build["context"]), build.get("target"))


def test_the_services_share_the_service_image_and_the_simulator_has_its_own(services: dict[str, dict[str, Any]]) -> None:
    service_images = {(services[name]["image"], _build(services[name])) for name in SERVICE_IMAGE_SERVICES}
    assert service_images == {("invoice-sm:local", (".", "service"))}
    for name in DEVTOOLS_SERVICES:
        assert _build(services[name]) == (".", "devtools"), name
        assert services[name]["image"] not in {image for image, _ in service_images}, f"{name} would overwrite the service image"
    stages = _dockerfile_stages()
    assert {"service", "devtools"} <= set(stages)


# --------------------------------------------------------------------------
# settings and commands
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_project_environment_names_are_real_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    for env_name in _environment(services[name]):
        assert env_name.startswith(ENV_PREFIX), env_name
        assert _field(env_name) in Settings.model_fields, f"{name}: {env_name} is not a setting"


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_project_environment_values_load(services: dict[str, dict[str, Any]], name: str) -> None:
    values = {_field(k): _interpolate(v) for k, v in _environment(services[name]).items()}
    settings = load_settings(**values)
    if name == "deliverer":
        settings.require_wechat()


@pytest.mark.parametrize("name", SERVICE_IMAGE_SERVICES)
def test_project_commands_are_real_subcommands(services: dict[str, dict[str, Any]], name: str) -> None:
    argv = [_interpolate(part) for part in _command(services[name])]
    assert argv[0] in COMMANDS, f"{name}: invoice-sm has no command {argv[0]!r}"
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


@pytest.mark.parametrize("name", DEVTOOLS_SERVICES)
def test_devtools_commands_are_real_dev_commands(services: dict[str, dict[str, Any]], name: str) -> None:
    argv = [_interpolate(part) for part in _command(services[name])]
    assert argv[0] in DEV_COMMANDS, f"{name}: python -m devtools has no command {argv[0]!r}"
    args = devtools.simulator.server._parser().parse_args(argv[1:])
    assert args.host == "0.0.0.0"


def test_the_processor_keeps_its_state_on_a_named_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    state_dir = _environment(services["processor"])["INVOICE_SM_STATE_DIR"]
    mounts = dict(str(spec).split(":")[:2][::-1] for spec in services["processor"]["volumes"])
    assert mounts[state_dir] in compose["volumes"]


def test_the_processor_and_deliverer_do_not_create_topics(services: dict[str, dict[str, Any]]) -> None:
    for name in METRICS_SERVICES:
        assert load_settings(create_topics=_environment(services[name])["INVOICE_SM_CREATE_TOPICS"]).create_topics is False


def test_the_deliverer_talks_to_the_simulator_service(services: dict[str, dict[str, Any]]) -> None:
    url = _environment(services["deliverer"])["INVOICE_SM_WECHAT_BASE_URL"]
    argv = _command(services["wechat-sim"])
    assert url == f"http://wechat-sim:{argv[argv.index('--port') + 1]}"


def test_startup_order_waits_for_the_broker_and_the_topics(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["kafka-init"]["restart"] == "no"
    for name in METRICS_SERVICES:
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert "wechat-sim" in services["deliverer"]["depends_on"]


# --------------------------------------------------------------------------
# topics
# --------------------------------------------------------------------------


def test_kafka_init_creates_the_topics_from_the_one_topic_table(services: dict[str, dict[str, Any]]) -> None:
    """kafka-init runs the service's own ``topics create`` with the default
    settings, so it creates exactly ``topic_table``'s rows (a new topic needs
    no line here) and nothing renames or resizes them."""
    init = services["kafka-init"]
    assert init["image"] == services["processor"]["image"], "the service image, which has invoice-sm"
    assert _command(init) == ["topics", "create"]
    environment = _environment(init)
    assert environment[f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert f"{ENV_PREFIX}CREATE_TOPICS" not in environment
    assert not [k for k in environment if k.startswith(f"{ENV_PREFIX}TOPIC_")], "kafka-init must create the default topics"
    settings = load_settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in environment.items()})
    specs = {spec.role: spec for spec in topic_table(settings)}
    assert specs["events"].configs()["retention.ms"] == "-1"
    assert specs["state"].cleanup == "compact"
    assert {spec.partitions for spec in specs.values()} == {Settings.model_construct().topic_partitions}


def test_the_services_use_the_default_topic_names(services: dict[str, dict[str, Any]]) -> None:
    for name in PROJECT_SERVICES:
        overridden = [k for k in _environment(services[name]) if k.startswith(f"{ENV_PREFIX}TOPIC_")]
        assert not overridden, f"{name} renames topics that kafka-init creates under their default names"


# --------------------------------------------------------------------------
# ports, health, metrics
# --------------------------------------------------------------------------


def test_every_port_is_published_on_loopback_once(services: dict[str, dict[str, Any]]) -> None:
    published: list[int] = []
    for name in ("kafka", "wechat-sim", "processor", "deliverer", "prometheus", "grafana"):
        ports = _ports(services[name])
        assert ports, f"{name} publishes no port"
        assert {host for host, _, _ in ports} == {"127.0.0.1"}, name
        published += [p for _, p, _ in ports]
    assert len(published) == len(set(published))


def test_metrics_ports_are_published_and_health_checked(services: dict[str, dict[str, Any]]) -> None:
    for name in METRICS_SERVICES:
        port = _metrics_port(services[name])
        assert port in {target for _, _, target in _ports(services[name])}, name
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_the_simulator_port_is_published(services: dict[str, dict[str, Any]]) -> None:
    argv = _command(services["wechat-sim"])
    port = int(argv[argv.index("--port") + 1])
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert port in {target for _, _, target in _ports(services["wechat-sim"])}


def test_prometheus_scrapes_the_metrics_endpoints(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", prometheus["image"])
    mounted = {str(spec).split(":")[0] for spec in prometheus["volumes"]}
    assert "./deploy/prometheus.yml" in mounted
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {target for job in config["scrape_configs"] for static in job["static_configs"] for target in static["targets"]}
    assert targets == {f"{name}:{_metrics_port(services[name])}" for name in METRICS_SERVICES} | {"node-exporter:9100"}


def test_reconcile_runs_on_a_schedule_and_node_exporter_publishes_what_it_found(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    reconcile, exporter = services["reconcile"], services["node-exporter"]
    assert (reconcile["image"], _build(reconcile)) == ("invoice-sm:local", (".", "service"))
    assert reconcile["entrypoint"] == ["/bin/sh", "-c"]
    script = _interpolate(" ".join(reconcile["command"]))
    loop = re.fullmatch(r"while :; do (?P<run>invoice-sm reconcile [^;]*); sleep (?P<interval>\S+); done", script)
    assert loop, script
    assert int(loop["interval"]) > 0
    argv = shlex.split(loop["run"])[1:]
    args = build_parser().parse_args(argv)
    assert args.command == "reconcile" and args.no_progress
    simulator = _command(services["wechat-sim"])
    assert args.wechat_sim_url == f"http://wechat-sim:{simulator[simulator.index('--port') + 1]}"
    # The file reconcile writes is in the volume node-exporter's textfile collector reads.
    metrics_file = Path(args.metrics_file)
    assert metrics_file.suffix == ".prom"
    volume = _mounts(reconcile)[str(metrics_file.parent)]
    assert volume in compose["volumes"]
    assert re.fullmatch(r"prom/node-exporter:v\d+\.\d+\.\d+", exporter["image"])
    read = {host: path for path, host in _mounts(exporter).items()}
    assert exporter["volumes"] == [f"{volume}:{read[volume]}:ro"]
    assert f"--collector.textfile.directory={read[volume]}" in exporter["command"]
    assert "--collector.textfile" in exporter["command"]
    # The service user's home: a new named volume there starts out owned by that user.
    assert str(metrics_file.parent) == "/var/lib/invoice-sm"
    assert "--home-dir /var/lib/invoice-sm invoice-sm" in (REPO / "Dockerfile").read_text()
    # What the run writes is what the alert reads.
    alerts = (REPO / "deploy" / "alerts.yml").read_text()
    assert "invoice_sm_divergences_total" in alerts
    from adapters.metrics import Metrics

    assert "invoice_sm_divergences" in {m.name for m in Metrics().registry.collect()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path of each bind mount (short syntax)."""
    return {parts[1]: parts[0] for parts in (str(spec).split(":") for spec in service["volumes"])}


def test_prometheus_loads_the_alert_rules(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    mounts = _mounts(services["prometheus"])
    assert config["rule_files"], "deploy/prometheus.yml loads no rules"
    for path in config["rule_files"]:
        assert mounts.get(path) == "./deploy/alerts.yml", f"{path} is not deploy/alerts.yml in the container"


def test_grafana_is_the_official_image_provisioned_from_deploy(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    mounts = _mounts(grafana)
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert "prometheus" in grafana["depends_on"]

    datasources = [
        ds for f in sorted((provisioning / "datasources").glob("*.yml")) for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    prometheus_port = _ports(services["prometheus"])[0][2]
    assert [(ds["type"], ds["url"]) for ds in datasources] == [("prometheus", f"http://prometheus:{prometheus_port}")]

    providers = [
        p for f in sorted((provisioning / "dashboards").glob("*.yml")) for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers, "no dashboard provider"
    uids = {ds["uid"] for ds in datasources}
    dashboards = 0
    for provider in providers:
        host_dir = REPO / mounts[provider["options"]["path"]]
        files = sorted(host_dir.glob("*.json"))
        assert files, f"{host_dir} holds no dashboard"
        for path in files:
            dashboard = json.loads(path.read_text())
            dashboards += 1
            panels = [p for p in dashboard["panels"] if p["type"] != "row"]
            assert panels, path
            for panel in panels:
                assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']} names no provisioned datasource"
                assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert dashboards
    home = _environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(providers[0]["options"]["path"] + "/")
        assert (REPO / mounts[providers[0]["options"]["path"]] / home.rsplit("/", 1)[1]).exists()


# --------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------


def _is_secret(field: str) -> bool:
    # SecretStr, SecretStr | None, dict[str, SecretStr]: masked in logs, so never literal here.
    return "SecretStr" in str(Settings.model_fields[field].annotation)


def test_secrets_come_only_from_substitutions(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name in PROJECT_SERVICES:
        for env_name, value in _environment(services[name]).items():
            if _is_secret(_field(env_name)):
                assert SUBSTITUTION.fullmatch(value), f"{name}: {env_name} is a literal, not ${{...}}"
                checked += 1
        argv = _command(services[name])
        for flag, value in itertools.pairwise(argv):
            if flag == "--account":
                assert SUBSTITUTION.fullmatch(value.partition(":")[2]), f"{name}: --account has a literal secret"
    assert checked, "no secret setting found: the check checks nothing"


def test_no_other_service_carries_a_password(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for env_name, value in _environment(service).items():
            if re.search(r"SECRET|PASSWORD|CREDENTIAL", env_name):
                assert SUBSTITUTION.fullmatch(value), f"{name}: {env_name}"


# --------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------


def _dockerfile_stages() -> dict[str, list[list[str]]]:
    """Stage name -> its instructions (each split into words), in file order.
    Continuation lines are joined; comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            assert len(words) == 4 and words[2].upper() == "AS", f"unnamed stage: {line}"
            current = stages.setdefault(words[3], [])
        current.append(words)
    return stages


def _base(stage: list[list[str]]) -> str:
    return stage[0][1]


def _lineage(stages: dict[str, list[list[str]]], name: str) -> list[str]:
    """The stage, its base stage, that one's base... (names of stages only)."""
    chain = [name]
    while _base(stages[chain[-1]]) in stages:
        chain.append(_base(stages[chain[-1]]))
    return chain


def _instructions(stages: dict[str, list[list[str]]], names: list[str], keyword: str) -> list[list[str]]:
    return [words[1:] for name in names for words in stages[name] if words[0].upper() == keyword]


def _copied_sources(stages: dict[str, list[list[str]]], names: list[str]) -> set[str]:
    """What the stages COPY from the build context (not --from another stage)."""
    sources: set[str] = set()
    for args in _instructions(stages, names, "COPY"):
        if any(a.startswith("--from=") for a in args):
            continue
        sources |= {a.rstrip("/") for a in args[:-1] if not a.startswith("--")}
    return sources


def _service_image_stages(stages: dict[str, list[list[str]]]) -> list[str]:
    """The service stage, the stages it is built on, and the stages they copy from."""
    names = _lineage(stages, "service")
    for args in _instructions(stages, names, "COPY"):
        for arg in args:
            if arg.startswith("--from="):
                names += [n for n in _lineage(stages, arg.removeprefix("--from=")) if n not in names]
    return names


def test_the_service_image_is_the_default_and_runs_invoice_sm_as_non_root() -> None:
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "service", "a plain `docker build` must make the service image"
    chain = _lineage(stages, "service")
    assert _base(stages[chain[-1]]) == "python:3.11-slim"
    users = [args[0] for args in _instructions(stages, chain[::-1], "USER")]
    assert users and users[-1] not in {"root", "0"}
    assert _instructions(stages, ["service"], "ENTRYPOINT") == [['["invoice-sm"]']]
    for env_name in re.findall(r"\b(INVOICE_SM_\w+)=", (REPO / "Dockerfile").read_text()):
        assert _field(env_name) in Settings.model_fields, env_name


def test_the_service_image_holds_exactly_the_installed_packages_and_no_devtools() -> None:
    stages = _dockerfile_stages()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    names = _service_image_stages(stages)
    assert "build" in names and "devtools" not in names
    copied = _copied_sources(stages, names)
    assert copied == packages | {"pyproject.toml", pyproject["project"]["readme"], "requirements.lock", "native"}
    assert "devtools" not in copied and "devtools" not in packages


def test_the_build_installs_the_hashed_lock_then_the_project_without_its_dependencies() -> None:
    runs = [" ".join(args) for args in _instructions(_dockerfile_stages(), ["build"], "RUN")]
    pip = [run for run in runs if run.startswith("pip install")]
    assert pip == ["pip install --require-hashes -r requirements.lock", "pip install --no-deps --no-build-isolation ."]
    # The native step: built after the project by the locked maturin (no isolation), with the Rust toolchain on PATH.
    native = [run for run in runs if "pip install" in run and run not in pip]
    assert len(native) == 1 and native[0].endswith("pip install --no-deps --no-build-isolation ./native"), native
    assert "PATH=/usr/local/cargo/bin:$PATH" in native[0]
    copied_from = {args[0] for args in _instructions(_dockerfile_stages(), ["build"], "COPY") if args[0].startswith("--from=")}
    assert copied_from == {"--from=rust-toolchain"}
    assert _base(_dockerfile_stages()["rust-toolchain"]).startswith("rust:")


def test_the_devtools_image_is_the_runtime_plus_devtools() -> None:
    stages = _dockerfile_stages()
    assert _lineage(stages, "devtools")[1:] == _lineage(stages, "service")[1:]
    assert _copied_sources(stages, ["devtools"]) == {"devtools"}
    assert _instructions(stages, ["devtools"], "ENTRYPOINT") == [['["python",', '"-m",', '"devtools"]']]


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".cache", ".git", "state", "bench/results", "native/target"} <= ignored


# --------------------------------------------------------------------------
# python -m devtools wechat-sim (what the wechat-sim service runs)
# --------------------------------------------------------------------------


def test_wechat_sim_help_shows_the_simulator_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        dev_main(["wechat-sim", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--latency-ms", "--account", "--no-demo-accounts", "--token-ttl-s"):
        assert flag in out


def test_wechat_sim_hands_the_simulator_its_arguments_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        received.append(list(argv))
        return 0

    monkeypatch.setattr(devtools.simulator.server, "main", fake_main)
    argv = [
        "--host",
        "0.0.0.0",
        "--port",
        "8088",
        "--account",
        "wxa:s1",
        "--latency-ms",
        "5",
        "--account",
        "wxb:s2",
        "--no-demo-accounts",
        "--token-ttl-s",
        "1.5",
    ]
    assert dev_main(["wechat-sim", *argv]) == 0
    assert received == [argv]
    assert dev_main(["wechat-sim"]) == 0
    assert received[-1] == []


@pytest.mark.parametrize("argv", [["--port", "x"], ["--account", "no-colon"], ["--unknown"]])
def test_wechat_sim_refuses_a_bad_argument_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setattr(devtools.simulator.server, "serve", lambda *a, **k: pytest.fail("the simulator must not start"))
    with pytest.raises(SystemExit) as info:
        dev_main(["wechat-sim", *argv])
    assert info.value.code == 2
    assert f"error: {'unrecognized' if argv == ['--unknown'] else 'argument ' + argv[0]}" in capsys.readouterr().err


def test_an_unknown_dev_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert dev_main(["wechat-simulator"]) == 2
    assert "unknown command 'wechat-simulator'" in capsys.readouterr().err


def test_wechat_sim_serves_until_sigterm_and_exits_cleanly() -> None:
    # As the devtools image's ENTRYPOINT runs it, from outside the checkout
    # with devtools on PYTHONPATH.
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools", "wechat-sim", "--port", "0", "--latency-ms", "1"],
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+\n", line), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

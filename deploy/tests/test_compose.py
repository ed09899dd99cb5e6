"""Static checks of what `docker compose up` runs: docker-compose.yml, the
balancer's deploy/nginx/nginx.conf and the Dockerfile.

No Docker engine is needed (nor used): `make test-deploy` also runs
`docker-compose config -q`, which validates the file against the Compose
schema; these tests check that the pieces fit together (names, ports,
environment, drain timing).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
GATEWAYS = sorted(name for name in SERVICES if name.startswith("gateway-"))
NGINX = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DRAIN_TIMEOUT_S = 30  # drain.timeout_ms default (docs/configuration.md)


def env(service: str) -> dict[str, str]:
    raw = SERVICES[service].get("environment", {})
    assert isinstance(raw, dict), f"{service}: environment as a map, please"
    return {k: str(v) for k, v in raw.items()}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    value, unit = int(match[1]), match[2]
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def documented_variables(doc: str) -> set[str]:
    return set(re.findall(r"`(ROOMCAST_[A-Z0-9_]+)`", (ROOT / "docs" / doc).read_text()))


def expand(value: str) -> str:
    """Compose's ${VAR:-default} interpolation, with the variable unset."""
    return re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", value)


def test_the_services_of_the_cluster_are_there():
    assert {"redis", "jaeger", "presence", "balancer"} <= set(SERVICES)
    assert GATEWAYS == ["gateway-1", "gateway-2", "gateway-3"]


def test_gateways_form_one_cluster():
    envs = [env(g) for g in GATEWAYS]
    assert sorted(e["ROOMCAST_NODE__ID"] for e in envs) == ["node-1", "node-2", "node-3"]
    for key in (
        "ROOMCAST_AUTH__RESUME_SECRET",
        "ROOMCAST_API__KEY",
        "ROOMCAST_ADMIN__KEY",  # a login on one gateway is good on all
        "ROOMCAST_REDIS__URL",
        "ROOMCAST_PRESENCE__URL",
    ):
        values = {e[key] for e in envs}
        assert len(values) == 1 and expand(values.pop()), key
    e = envs[0]
    assert e["ROOMCAST_REDIS__URL"] == "redis://redis:6379"
    assert e["ROOMCAST_PRESENCE__URL"] == "http://presence:8090"
    assert e["ROOMCAST_LISTEN"] == "0.0.0.0:8080"
    assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert e["OTEL_SERVICE_NAME"]
    # Every client comes through the balancer's one address.
    assert e["ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP"] == "0"
    for g in GATEWAYS:
        assert SERVICES[g]["command"] == ["roomcast-gateway"]


def test_the_admin_page_is_on_with_a_development_key_over_plain_http():
    for g in GATEWAYS:
        e = env(g)
        assert e["ROOMCAST_ADMIN__ENABLED"] == "true"
        # Compose serves plain HTTP: a Secure cookie would not come back.
        assert e["ROOMCAST_ADMIN__SECURE_COOKIE"] == "false"
        # A development default that the environment overrides, like the
        # other secrets; the node wants 16 bytes and not the API key.
        match = re.fullmatch(r"\$\{ROOMCAST_ADMIN__KEY:-([^}]+)\}", e["ROOMCAST_ADMIN__KEY"])
        assert match and "dev" in match[1], e["ROOMCAST_ADMIN__KEY"]
        assert len(match[1].encode()) >= 16
        assert match[1] != expand(e["ROOMCAST_API__KEY"])
        # Each gateway's own port reaches its /admin/ (the balancer does not).
        assert any(p.endswith(":8080") for p in SERVICES[g]["ports"])


def test_presence_service():
    e = env("presence")
    assert SERVICES["presence"]["command"] == ["roomcast-presence"]
    assert e["ROOMCAST_LISTEN"] == "0.0.0.0:8090"
    assert e["ROOMCAST_REDIS__URL"] == "redis://redis:6379"


def test_roomcast_variables_are_documented_keys():
    gateway_keys = documented_variables("configuration.md")
    presence_keys = documented_variables("presence.md")
    for g in GATEWAYS:
        unknown = {k for k in env(g) if k.startswith("ROOMCAST_")} - gateway_keys
        assert not unknown, f"{g}: {sorted(unknown)} not in docs/configuration.md"
    unknown = {k for k in env("presence") if k.startswith("ROOMCAST_")} - presence_keys
    assert not unknown, f"presence: {sorted(unknown)} not in docs/presence.md"


def test_a_stop_leaves_the_gateways_time_to_drain():
    timeout_s = DRAIN_TIMEOUT_S
    if "ROOMCAST_DRAIN__TIMEOUT_MS" in env(GATEWAYS[0]):
        timeout_s = int(env(GATEWAYS[0])["ROOMCAST_DRAIN__TIMEOUT_MS"]) / 1000
    for g in GATEWAYS:
        assert seconds(SERVICES[g]["stop_grace_period"]) > timeout_s, g


def test_health_checks_and_start_order():
    for name in ["redis", "presence", "balancer", *GATEWAYS]:
        assert SERVICES[name]["healthcheck"]["test"], name
    for g in GATEWAYS:
        assert "/readyz" in " ".join(SERVICES[g]["healthcheck"]["test"])
        depends = SERVICES[g]["depends_on"]
        assert depends["redis"]["condition"] == depends["presence"]["condition"] == "service_healthy"
    assert {g: {"condition": "service_healthy"} for g in GATEWAYS} == SERVICES["balancer"]["depends_on"]


def test_one_image_for_the_roomcast_services():
    roomcast = ["presence", *GATEWAYS]
    assert {SERVICES[s]["image"] for s in roomcast} == {"roomcast:local"}
    for s in roomcast:
        assert SERVICES[s]["build"]["context"] == "."
        assert (ROOT / SERVICES[s]["build"]["dockerfile"]).is_file()


def test_jaeger_takes_otlp():
    jaeger = SERVICES["jaeger"]
    assert str(jaeger["environment"]["COLLECTOR_OTLP_ENABLED"]).lower() == "true"
    published = {p.rsplit(":", 1)[-1] for p in jaeger["ports"]}
    assert {"4317", "4318", "16686"} <= published


def test_balancer_is_nginx_with_this_config():
    balancer = SERVICES["balancer"]
    assert balancer["image"].startswith("nginx:")
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    assert any(p.endswith(":8080") for p in balancer["ports"])
    assert re.search(r"^\s*listen 8080;", NGINX, re.M)


def test_nginx_passes_websockets_to_every_gateway_stickily():
    upstream = re.search(r"upstream roomcast_gateways \{(.*?)\}", NGINX, re.S)[1]
    servers = re.findall(r"^\s*server ([\w.-]+):(\d+)", upstream, re.M)
    assert sorted(servers) == [(g, "8080") for g in GATEWAYS]
    assert re.search(r"^\s*hash \$remote_addr consistent;", upstream, re.M)
    ws = re.search(r"location = /ws \{(.*?)\}", NGINX, re.S)[1]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert "proxy_set_header Connection $connection_upgrade;" in ws
    assert re.search(r"proxy_read_timeout (\d+)h;", ws)
    assert re.search(r"^\s*proxy_http_version 1\.1;", NGINX, re.M)
    assert "map $http_upgrade $connection_upgrade" in NGINX
    # A draining gateway answers 503: the upgrade goes to the next one.
    assert re.search(r"proxy_next_upstream [^;]*http_503", NGINX)
    # Braces balance (a cheap syntax check; nginx -t needs the gateways' hosts).
    assert NGINX.count("{") == NGINX.count("}")


def test_dockerfile_builds_both_binaries_and_runs_as_non_root():
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert stages[0].startswith("rust:1-bookworm") and stages[-1] == "debian:bookworm-slim"
    builds = re.findall(r"cargo build --release --locked -p roomcast-gateway -p roomcast-presence", DOCKERFILE)
    assert len(builds) == 2  # dependencies, then the real sources
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.fullmatch(r"\d+(:\d+)?", user[-1]), "numeric, so runAsNonRoot can check it"
    # The binaries the compose file and the chart start exist in the image.
    assert "target/release/roomcast-gateway target/release/roomcast-presence /out/" in DOCKERFILE
    entrypoint = ROOT / "deploy" / "docker" / "entrypoint.sh"
    assert entrypoint.is_file() and os.access(entrypoint, os.X_OK)
    # Health checks of the compose file use curl from the image.
    assert "curl" in re.search(r"FROM debian:bookworm-slim.*", DOCKERFILE, re.S)[0]


@pytest.mark.parametrize("excluded", ["target", ".git", ".venv"])
def test_dockerignore_keeps_build_output_out(excluded):
    lines = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()}
    assert excluded in lines

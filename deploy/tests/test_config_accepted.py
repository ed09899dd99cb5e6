"""The settings the chart and the compose file give the binaries are accepted
by the real binaries: each value set's environment (rendered ConfigMap, env
entries, Secret values) is handed to roomcast-presence and roomcast-gateway,
which must start, serve, and report no unknown configuration key. Where the
settings turn the admin page on, the gateway must serve it, refuse a wrong
key and log in with the configured one (with the configured cookie); where
they do not, /admin/ must be 404.

Addresses are swapped for loopback ones (listen on 127.0.0.1:0, a private
redis-server on a free port, the presence process just started, a closed port
for the OTLP collector); everything else is exactly what would be deployed.

Needs the debug binaries (`make build`) and redis-server: `make test-deploy`
passes ROOMCAST_GATEWAY_BIN and ROOMCAST_PRESENCE_BIN; run alone without
them, this module is skipped when target/debug has no binaries.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_compose import SERVICES, GATEWAYS, env as compose_env, expand
from test_helm_chart import NAMESPACE, VALUE_SETS, find, manifests, one

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def _binary(var: str, name: str) -> Path:
    given = os.environ.get(var)
    path = Path(given) if given else TARGET / "debug" / name
    if not path.is_file():
        if given:
            pytest.fail(f"{var}={given} does not exist")
        pytest.skip(f"{path} not built (make build), and {var} not set")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A binary started with exactly the given environment, output to a file."""

    def __init__(self, binary: Path, env: dict[str, str], workdir: Path, name: str):
        self.log = workdir / f"{name}.log"
        self.name = name
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        self.proc = subprocess.Popen(
            [str(binary)], env=full_env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, seconds: float = 30) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://([0-9.]+:\d+)", self.output())
            if match:
                return match[1]
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"{self.name} did not listen within {seconds}s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def binaries():
    return _binary("ROOMCAST_GATEWAY_BIN", "roomcast-gateway"), _binary("ROOMCAST_PRESENCE_BIN", "roomcast-presence")


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="roomcast-deploy-config."))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_for_port(port: int, proc: subprocess.Popen, what: str, secs: float = 10) -> None:
    """Waits until 127.0.0.1:`port` accepts; fails the test if `proc` exits
    or `secs` pass first."""
    deadline = time.monotonic() + secs
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{what} did not start")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url(workdir):
    server = shutil.which("redis-server")
    if not server:
        pytest.skip("redis-server not installed (scripts/deps.sh redis)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def request(addr: str, method: str, path: str, body: str = "", headers: dict | None = None):
    """One plain HTTP request; returns (status, headers as (name, value) pairs, body)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body.encode() or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read().decode(errors="replace")
    finally:
        conn.close()


def check_admin_page(addr: str, env: dict[str, str]) -> None:
    """The admin page as the settings say: 404 when off; when on, the login
    page, 401 for a wrong key, and a session cookie for the configured key."""
    status, _, body = request(addr, "GET", "/admin/")
    if env.get("ROOMCAST_ADMIN__ENABLED") != "true":
        assert status == 404, (status, body)
        return
    assert status == 200 and "Admin key" in body, (status, body)

    def login(key: str):
        return request(addr, "POST", "/admin/login", json.dumps({"key": key}), {"Content-Type": "application/json"})

    status, headers, body = login("rc-not-the-admin-key-at-all")
    assert status == 401 and "wrong admin key" in body, (status, body)
    assert not [v for k, v in headers if k.lower() == "set-cookie"]

    status, headers, body = login(env["ROOMCAST_ADMIN__KEY"])
    assert status == 200, (status, body)
    (cookie,) = [v for k, v in headers if k.lower() == "set-cookie"]
    attributes = {a.strip().split("=", 1)[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert ("secure" in attributes) == (env.get("ROOMCAST_ADMIN__SECURE_COOKIE") == "true"), cookie
    ttl_ms = int(env.get("ROOMCAST_ADMIN__SESSION_TTL_MS", "28800000"))
    assert attributes["max-age"] == f"Max-Age={ttl_ms // 1000}", cookie
    status, _, body = request(addr, "GET", "/admin/session", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and "expires_at_ms" in body, (status, body)


def run_pair(binaries, workdir, name, presence_env, gateway_env, redis_url):
    """Starts presence, then a gateway pointed at it; both must serve cleanly
    (and the admin page as the settings say)."""
    gateway_bin, presence_bin = binaries
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = []
    try:
        presence_env = {**presence_env, "ROOMCAST_LISTEN": "127.0.0.1:0", "ROOMCAST_REDIS__URL": redis_url}
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in presence_env:
            presence_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = closed
        presence = Process(presence_bin, presence_env, workdir, f"{name}-presence")
        started.append(presence)
        presence_addr = presence.wait_listening()

        gateway_env = {**gateway_env, "ROOMCAST_LISTEN": "127.0.0.1:0", "ROOMCAST_REDIS__URL": redis_url}
        if "ROOMCAST_PRESENCE__URL" in gateway_env:
            gateway_env["ROOMCAST_PRESENCE__URL"] = f"http://{presence_addr}"
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in gateway_env:
            gateway_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = closed
        gateway = Process(gateway_bin, gateway_env, workdir, f"{name}-gateway")
        started.append(gateway)
        gateway_addr = gateway.wait_listening()
        # The node is a cluster node (text logs: engine="redis"; JSON: "engine":"redis").
        assert re.search(r'engine"?[=:]"redis"', gateway.output()), gateway.output()
        check_admin_page(gateway_addr, gateway_env)
        time.sleep(0.3)  # let late warnings arrive
        for proc in started:
            assert "unknown configuration key" not in proc.output(), proc.output()
            assert proc.proc.poll() is None, proc.output()
    finally:
        for proc in reversed(started):
            proc.stop()


# --- the Helm chart ------------------------------------------------------------------


def container_env(docs: list[dict], container: dict, pod_name: str) -> dict[str, str]:
    """The environment Kubernetes would give the container."""
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in find(docs, "Secret")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        env.update(config_map["data"])
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = re.sub(r"\$\(([A-Za-z0-9_]+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            env[name] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref["name"] in secrets:  # rendered by the chart: its real values
                if ref["key"] in secrets[ref["name"]]:
                    env[name] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
                else:
                    assert ref.get("optional"), f"{name}: key {ref['key']} missing from Secret {ref['name']}"
            elif not ref.get("optional"):  # an existing Secret: a stand-in value
                env[name] = f"rc-test-stand-in-{ref['name']}-{ref['key']}"
    return env


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_settings_are_accepted_by_the_binaries(name, binaries, workdir, redis_url):
    docs = manifests(name)
    gateway_pod = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    gateway = next(c for c in gateway_pod["containers"] if c["name"] == "gateway")
    presence_pod = one(docs, "Deployment", "-presence")["spec"]["template"]["spec"]
    presence = presence_pod["containers"][0]
    assert gateway["args"] == ["roomcast-gateway"] and presence["args"] == ["roomcast-presence"]
    run_pair(
        binaries,
        workdir,
        f"chart-{name}",
        container_env(docs, presence, "roomcast-presence-6d5b8c7f9-q2w3e"),
        container_env(docs, gateway, "roomcast-gateway-7f8d9c6b5-x7k2p"),
        redis_url,
    )


# --- docker-compose --------------------------------------------------------------------


def test_compose_settings_are_accepted_by_the_binaries(binaries, workdir, redis_url):
    gateway = {k: expand(v) for k, v in compose_env(GATEWAYS[0]).items()}
    presence = {k: expand(v) for k, v in compose_env("presence").items()}
    assert SERVICES["presence"]["command"] == ["roomcast-presence"]
    run_pair(binaries, workdir, "compose", presence, gateway, redis_url)

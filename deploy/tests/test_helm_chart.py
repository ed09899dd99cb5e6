"""The Helm chart (deploy/helm/roomcast), checked with the real Helm library.

helm-python-sdk embeds Helm's Go SDK (no helm binary): `helm_python.lint` is
`helm lint`, `Chart.render` is `helm template`. Every rendered manifest is
validated strictly (unknown fields are errors) with kubernetes-validate
against the Kubernetes API of KUBE_VERSION.

Run with `make test-deploy`, or:
    $(scripts/deploy-venv.sh) -m pytest -q deploy/tests
"""

from __future__ import annotations

import base64
import json
import re
from functools import lru_cache
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "roomcast"
KUBE_VERSION = "1.30.0"
RELEASE = "roomcast"
NAMESPACE = "roomcast"

# Kinds kubernetes-validate has no schema for, with the schema used instead.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): Path(__file__).parent
    / "schemas"
    / "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): Path(__file__).parent
    / "schemas"
    / "prometheusrule-monitoring-v1.json",
}

ADMIN_KEY = "rc-admin-key-of-the-chart-tests"

# Everything optional switched on at once, so every template is rendered and
# validated at least once (besides the two values files users start from).
EVERYTHING = {
    "secrets": {
        "apiKey": "rc-api-key",
        "resumeSecret": "rc-resume-secret",
        "presenceKey": "rc-presence-key",
        "jwtSecret": "rc-jwt-secret",
    },
    "auth": {"anonymous": False, "jwtAlgorithm": "HS256"},
    "redis": {"bundled": {"enabled": False}, "url": "redis://:pw@redis.example:6379"},
    "otlp": {"endpoint": "http://jaeger-collector:4317"},
    "gateway": {
        "env": {"ROOMCAST_HISTORY__SIZE": "500"},
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "autoscaling": {"enabled": True},
        "podAntiAffinity": "hard",
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        "service": {"sessionAffinity": "ClientIP"},
    },
    "presence": {"env": {"ROOMCAST_LEASE__DEFAULT_MS": "20000"}},
    "admin": {"enabled": True, "key": ADMIN_KEY, "sessionTtlMs": 3600000, "maxLoginFailuresPerMinute": 10},
    "ingress": {"enabled": True, "tls": [{"secretName": "rc-tls", "hosts": ["roomcast.local"]}]},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "roomcast"}},
    },
}

VALUE_SETS = {
    "default": {},
    "production": yaml.safe_load((CHART / "values-production.yaml").read_text()),
    "everything": EVERYTHING,
    # The admin page with its key in a Secret the user made, and without the
    # Secure cookie (the key from the chart's own Secret is in "everything").
    "admin-existing-secret": {
        "admin": {"enabled": True, "existingSecret": "ops-admin", "existingSecretKey": "key", "secureCookie": False}
    },
}


@lru_cache(maxsize=None)
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict) -> list[dict]:
    """Renders the chart like `helm template`; returns the manifests."""
    rendered = _chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs


@lru_cache(maxsize=None)
def _rendered_json(name: str) -> str:
    return json.dumps(render(VALUE_SETS[name]))


def manifests(name: str) -> list[dict]:
    return json.loads(_rendered_json(name))


def find(docs: list[dict], kind: str, suffix: str = "") -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


def one(docs: list[dict], kind: str, suffix: str = "") -> dict:
    found = find(docs, kind, suffix)
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def gateway_container(docs: list[dict]) -> dict:
    pod = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "gateway")


def gateway_config(docs: list[dict]) -> dict[str, str]:
    """The gateway's plain settings: its ConfigMap (via envFrom) plus literal env values."""
    container = gateway_container(docs)
    config: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        config.update(config_map["data"])
    for env in container.get("env", []):
        if "value" in env:
            config[env["name"]] = env["value"]
    return config


def documented_variables(doc: str) -> set[str]:
    return set(re.findall(r"`(ROOMCAST_[A-Z0-9_]+)`", (ROOT / "docs" / doc).read_text()))


# --- lint and render -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1, report
    # Severity 1 is INFO (such as "icon is recommended"); 2 WARNING, 3 ERROR.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], json.dumps(report, indent=2)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_renders(name):
    kinds = {d["kind"] for d in manifests(name)}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds, kinds


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_validates_strictly(name):
    docs = manifests(name)
    assert docs
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata'].get('name')}"
        crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        try:
            if crd:
                jsonschema.validate(doc, json.loads(crd.read_text()))
            else:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{label} does not validate: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{label}: {e.message}")


# --- drain, probes -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_grace_period_exceeds_prestop_plus_drain(name):
    docs = manifests(name)
    pod = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    container = gateway_container(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    pre_stop = float(command[1])
    config = gateway_config(docs)
    window_s = int(config["ROOMCAST_DRAIN__WINDOW_MS"]) / 1000
    timeout_s = int(config["ROOMCAST_DRAIN__TIMEOUT_MS"]) / 1000
    grace = pod["terminationGracePeriodSeconds"]
    assert window_s < timeout_s
    assert grace > pre_stop + window_s, (grace, pre_stop, window_s)
    # Stronger: the process exits by drain.timeout_ms at the latest, so no
    # drain is ever cut short by SIGKILL.
    assert grace > pre_stop + timeout_s, (grace, pre_stop, timeout_s)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_probes_use_readyz_and_healthz(name):
    docs = manifests(name)
    container = gateway_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz"
    listen_port = int(gateway_config(docs)["ROOMCAST_LISTEN"].rsplit(":", 1)[1])
    assert ports[ready["port"]] == ports[live["port"]] == listen_port
    presence = find(docs, "Deployment", "-presence")
    for dep in presence:
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


# --- wiring ------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_services_pdb_hpa_and_ingress_point_at_the_right_pods(name):
    docs = manifests(name)
    gateway = one(docs, "Deployment", "-gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert _selects(gateway["spec"]["selector"], pod_labels)
    service = one(docs, "Service", "-gateway")
    assert _selects({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert _selects(one(docs, "PodDisruptionBudget", "-gateway")["spec"]["selector"], pod_labels)
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
        assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    for ingress in find(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    for monitor in find(docs, "ServiceMonitor"):
        selected = {
            s["metadata"]["name"] for s in find(docs, "Service") if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        }
        assert selected == {f"{RELEASE}-gateway", f"{RELEASE}-presence"}, selected
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_gateways_reach_presence_and_redis(name):
    docs = manifests(name)
    config = gateway_config(docs)
    presence = one(docs, "Service", "-presence")
    assert config["ROOMCAST_PRESENCE__URL"] == (
        f"http://{presence['metadata']['name']}:{presence['spec']['ports'][0]['port']}"
    )
    assert config["ROOMCAST_LISTEN"].startswith("0.0.0.0:")
    env = {e["name"]: e for e in gateway_container(docs)["env"]}
    redis_services = find(docs, "Service", "-redis")
    if redis_services:  # bundled
        port = redis_services[0]["spec"]["ports"][0]["port"]
        assert env["ROOMCAST_REDIS__URL"]["value"] == f"redis://{redis_services[0]['metadata']['name']}:{port}"
    else:
        assert "secretKeyRef" in env["ROOMCAST_REDIS__URL"]["valueFrom"]
    # Secrets never appear as plain values.
    for secret in ("ROOMCAST_API__KEY", "ROOMCAST_AUTH__RESUME_SECRET", "ROOMCAST_PRESENCE__KEY"):
        assert "secretKeyRef" in env[secret]["valueFrom"], secret
        assert secret not in config
    # Every node gets its own id.
    assert env["ROOMCAST_NODE__ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_environment_variables_are_documented_keys(name):
    """A misspelt ROOMCAST_ variable would only be logged as an unknown key."""
    docs = manifests(name)
    gateway_keys = documented_variables("configuration.md")
    presence_keys = documented_variables("presence.md")
    set_on_gateway = set(gateway_config(docs)) | {e["name"] for e in gateway_container(docs)["env"]}
    unknown = {v for v in set_on_gateway if v.startswith("ROOMCAST_")} - gateway_keys
    assert not unknown, f"not in docs/configuration.md: {sorted(unknown)}"
    for dep in find(docs, "Deployment", "-presence"):
        names = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        unknown = {v for v in names if v.startswith("ROOMCAST_")} - presence_keys
        assert not unknown, f"not in docs/presence.md: {sorted(unknown)}"


def test_production_values():
    docs = manifests("production")
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 6
    annotations = one(docs, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-name"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    one(docs, "ServiceMonitor")
    # External Redis and an existing Secret: the chart creates neither.
    assert not find(docs, "Secret") and not find(docs, "Deployment", "-redis")
    env = {e["name"]: e for e in gateway_container(docs)["env"]}
    assert env["ROOMCAST_API__KEY"]["valueFrom"]["secretKeyRef"]["name"] == "roomcast-secrets"
    assert env["ROOMCAST_REDIS__URL"]["valueFrom"]["secretKeyRef"] == {"name": "roomcast-secrets", "key": "redis-url"}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http")


def test_default_values():
    docs = manifests("default")
    assert one(docs, "Deployment", "-gateway")["spec"]["replicas"] == 3
    assert not find(docs, "Ingress") and not find(docs, "ServiceMonitor") and not find(docs, "HorizontalPodAutoscaler")
    assert not find(docs, "PrometheusRule") and not find(docs, "ConfigMap", "-dashboard")
    secret = one(docs, "Secret")
    assert {"api-key", "resume-secret", "presence-key"} <= set(secret["data"])
    assert one(docs, "Deployment", "-presence")["spec"]["replicas"] == 1


# --- the admin page ------------------------------------------------------------------


def admin_settings(docs: list[dict]) -> tuple[dict[str, str], dict | None]:
    """The gateway's plain ROOMCAST_ADMIN__* settings, and its ROOMCAST_ADMIN__KEY env entry."""
    config = {k: v for k, v in gateway_config(docs).items() if k.startswith("ROOMCAST_ADMIN__")}
    key = [e for e in gateway_container(docs)["env"] if e["name"] == "ROOMCAST_ADMIN__KEY"]
    assert len(key) <= 1
    return config, key[0] if key else None


@pytest.mark.parametrize("name", ["default", "production"])
def test_the_admin_page_is_off_by_default(name):
    docs = manifests(name)
    assert admin_settings(docs) == ({}, None)
    assert not find(docs, "Secret", "-admin")


def test_the_admin_page_with_the_key_in_the_charts_secret():
    docs = manifests("everything")
    config, key = admin_settings(docs)
    assert config == {
        "ROOMCAST_ADMIN__ENABLED": "true",
        "ROOMCAST_ADMIN__SESSION_TTL_MS": "3600000",
        # Behind a TLS ingress by default: the cookie travels over HTTPS only.
        "ROOMCAST_ADMIN__SECURE_COOKIE": "true",
        "ROOMCAST_ADMIN__MAX_LOGIN_FAILURES_PER_MINUTE": "10",
    }
    secret = one(docs, "Secret", "-admin")
    assert key == {
        "name": "ROOMCAST_ADMIN__KEY",
        "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "admin-key"}},
    }
    assert secret["data"] == {"admin-key": base64.b64encode(ADMIN_KEY.encode()).decode()}
    # The key is never a plain value, and a new key rolls the gateways.
    assert ADMIN_KEY not in json.dumps([d for d in docs if d["kind"] != "Secret"])
    annotations = one(docs, "Deployment", "-gateway")["spec"]["template"]["metadata"]["annotations"]
    other = json.loads(json.dumps(EVERYTHING))
    other["admin"]["key"] = "rc-another-admin-key-0123"
    rolled = one(render(other), "Deployment", "-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/admin-secret"] != rolled["checksum/admin-secret"]


def test_the_admin_page_with_the_key_in_an_existing_secret():
    docs = manifests("admin-existing-secret")
    config, key = admin_settings(docs)
    assert config["ROOMCAST_ADMIN__ENABLED"] == "true"
    assert config["ROOMCAST_ADMIN__SECURE_COOKIE"] == "false"
    assert config["ROOMCAST_ADMIN__SESSION_TTL_MS"] == "28800000"
    assert key["valueFrom"] == {"secretKeyRef": {"name": "ops-admin", "key": "key"}}
    assert not find(docs, "Secret", "-admin")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"admin": {"enabled": True}}, "admin page has no key"),
        ({"admin": {"enabled": True, "existingSecret": "ops-admin", "key": ADMIN_KEY}}, "not both"),
        ({"admin": {"enabled": True, "key": ADMIN_KEY}, "secrets": {"apiKey": ADMIN_KEY}}, "must differ"),
    ],
    ids=["no key", "two keys", "the API key"],
)
def test_render_refuses_an_admin_page_without_one_good_key(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"admin": {"enabled": "yes"}},
        {"admin": {"key": "rc-too-short"}},
        {"admin": {"key": "1234567890123456789"}},
        {"admin": {"sessionTtlMs": 0}},
        {"admin": {"maxLoginFailuresPerMinute": 0}},
        {"admin": {"secure_cookie": False}},
    ],
    ids=repr,
)
def test_schema_refuses_bad_admin_values(values):
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(values)


# --- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"replicas": "three"}},
        {"gateway": {"replica": 3}},
        {"secrets": {"apiKey": "12345"}},
        {"secrets": {"resumeSecret": "true"}},
        {"gateway": {"podAntiAffinity": "sometimes"}},
        {"gateway": {"env": {"ROOMCAST_HISTORY__SIZE": 500}}},
        {"ingress": {"hosts": [{"host": "x", "paths": [{"path": "ws", "pathType": "Exact"}]}]}},
        {"redis": {"url": "http://redis:6379"}},
    ],
    ids=repr,
)
def test_schema_refuses_bad_values(values):
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(values)


def test_render_refuses_a_grace_period_shorter_than_the_drain():
    # 5 s preStop + 30 s drain timeout = 35 s: 35 is not enough.
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"gateway": {"terminationGracePeriodSeconds": 35}})
    with pytest.raises(helm.HelmError, match="windowMs"):
        render({"gateway": {"drain": {"windowMs": 30000, "timeoutMs": 30000}}})


def test_render_refuses_a_cluster_without_redis():
    with pytest.raises(helm.HelmError, match="Redis"):
        render({"redis": {"bundled": {"enabled": False}}})

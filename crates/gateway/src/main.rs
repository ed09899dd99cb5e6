//! `roomcast-gateway`: loads the configuration, sets up logging, runs a node.

use std::process::ExitCode;

use roomcast_gateway::config::Config;
use roomcast_gateway::telemetry;

const USAGE: &str = "usage: roomcast-gateway [--config PATH]

Configuration: defaults, then the TOML file (--config or ROOMCAST_CONFIG),
then ROOMCAST_* environment variables (ROOMCAST_LIMITS__MAX_MESSAGE_BYTES=…).
See docs/configuration.md.";

/// Descriptors a node holds besides its clients' sockets (listener, Redis,
/// presence, logs, epoll), with room to spare.
const FILES_BESIDE_CONNECTIONS: u64 = 64;

fn main() -> ExitCode {
    roomcast_service::limit_malloc_arenas();
    let file = match roomcast_service::parse_cli("roomcast-gateway", USAGE) {
        roomcast_service::Cli::Run { config } => config,
        roomcast_service::Cli::Exit(code) => return code,
    };
    let (config, unknown) = match Config::load(file.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logging and tracing first (the gRPC exporter needs the runtime).
    let telemetry = match runtime.block_on(async { telemetry::init(&config, "roomcast-gateway") }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    for key in unknown {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    // Every connection is a descriptor: use all the process may have, and
    // say so when that is fewer than the connections allowed.
    if let Some(open_files) = roomcast_service::raise_open_files_limit() {
        let wanted = config.limits.max_connections as u64 + FILES_BESIDE_CONNECTIONS;
        if open_files < wanted {
            tracing::warn!(
                open_files,
                max_connections = config.limits.max_connections,
                "the open-file limit (ulimit -n) is below limits.max_connections: \
                 connections past it wait in the listen queue until a descriptor is free"
            );
        }
    }
    let result = runtime.block_on(roomcast_gateway::run(config, file));
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

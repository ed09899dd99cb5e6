//! `roomcast-gateway`: loads the configuration, sets up logging, runs a node.

use std::path::PathBuf;
use std::process::ExitCode;

use roomcast_gateway::config::Config;
use roomcast_gateway::telemetry;

const USAGE: &str = "usage: roomcast-gateway [--config PATH]

Configuration: defaults, then the TOML file (--config or ROOMCAST_CONFIG),
then ROOMCAST_* environment variables (ROOMCAST_LIMITS__MAX_MESSAGE_BYTES=…).
See docs/configuration.md.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut file = std::env::var_os("ROOMCAST_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => file = Some(PathBuf::from(path)),
                None => {
                    eprintln!("--config needs a path\n\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("roomcast-gateway {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
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
    let result = runtime.block_on(roomcast_gateway::run(config));
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

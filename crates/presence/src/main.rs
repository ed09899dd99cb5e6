//! `roomcast-presence`: loads the configuration, sets up logging, runs the
//! presence service until SIGTERM/SIGINT.

use std::process::ExitCode;

use roomcast_presence::config::Config;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: roomcast-presence [--config PATH]

Configuration: defaults, then the TOML file (--config or ROOMCAST_CONFIG),
then ROOMCAST_* environment variables (ROOMCAST_REDIS__URL=redis://…).
See docs/presence.md.";

fn main() -> ExitCode {
    roomcast_service::limit_malloc_arenas();
    let file = match roomcast_service::parse_cli("roomcast-presence", USAGE) {
        roomcast_service::Cli::Run { config } => config,
        roomcast_service::Cli::Exit(code) => return code,
    };
    let (config, unknown) = match Config::load(file.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("roomcast-presence: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log.level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("roomcast-presence: configuration error: log.level: {e}");
            return ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if config.log.json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .init();
    }
    for key in unknown {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-presence: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(roomcast_presence::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast-presence: {e}");
            ExitCode::FAILURE
        }
    }
}

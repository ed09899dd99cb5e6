//! What every roomcast process (the gateway, the presence service) shares:
//! its command line, how it loads its typed configuration, and how it learns
//! it must stop; and its metrics' handles and exposition ([`metrics`]).
//!
//! Configuration comes from the type's defaults, then a TOML file
//! (`--config PATH` or `ROOMCAST_CONFIG`), then `ROOMCAST_…` environment
//! variables with `__` between levels. Errors name the key (and its
//! environment variable) and never echo the value of a secret; keys no field
//! knows are returned so the process can warn about likely typos.

pub mod bearer;
pub mod metrics;
pub mod parked;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Logging settings of every roomcast process (`log.level`, `log.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Log filter (`info`, `debug`, `roomcast_gateway=debug,info`, …).
    pub level: String,
    /// Log one JSON object per line instead of text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            json: false,
        }
    }
}

/// What the command line asked for.
pub enum Cli {
    /// Run, with this configuration file (if any).
    Run { config: Option<PathBuf> },
    /// `--help`/`--version` was answered, or the arguments were wrong.
    Exit(ExitCode),
}

/// Parses `[--config PATH] | --help | --version` for the binary `name`.
pub fn parse_cli(name: &str, usage: &str) -> Cli {
    let mut args = std::env::args().skip(1);
    let mut config = std::env::var_os("ROOMCAST_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config = Some(PathBuf::from(path)),
                None => {
                    eprintln!("--config needs a path\n\n{usage}");
                    return Cli::Exit(ExitCode::from(2));
                }
            },
            "--help" | "-h" => {
                println!("{usage}");
                return Cli::Exit(ExitCode::SUCCESS);
            }
            "--version" | "-V" => {
                println!("{name} {}", env!("CARGO_PKG_VERSION"));
                return Cli::Exit(ExitCode::SUCCESS);
            }
            other => {
                eprintln!("unknown argument {other:?}\n\n{usage}");
                return Cli::Exit(ExitCode::from(2));
            }
        }
    }
    Cli::Run { config }
}

/// Loads `T`: defaults, then `file`, then `ROOMCAST_*` variables. Returns
/// the configuration and the keys no field knows. `secrets` are keys whose
/// values an error must never show.
pub fn load<T>(file: Option<&Path>, secrets: &[&str]) -> Result<(T, Vec<String>), String>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!(
                "config file {} does not exist (--config / ROOMCAST_CONFIG)",
                path.display()
            ));
        }
        figment = figment.merge(Toml::file(path));
    }
    // ROOMCAST_CONFIG names the file; the others are the test harnesses'
    // and scripts' own variables, not configuration keys.
    figment = figment.merge(Env::prefixed("ROOMCAST_").split("__").ignore(&[
        "config",
        "gateway_bin",
        "presence_bin",
        "bin_dir",
        "test_no_build",
        "keep_logs",
    ]));
    let config: T = figment.extract().map_err(|e| describe(e, secrets))?;
    let known = serde_json::to_value(T::default()).unwrap_or_default();
    let given: serde_json::Value = figment.extract().unwrap_or_default();
    let mut unknown = Vec::new();
    walk_unknown(&given, &known, "", &mut unknown);
    Ok((config, unknown))
}

/// Lifts this process's soft limit on open files to its hard limit (many
/// systems start processes at 1,024 while allowing far more; every
/// connection is a descriptor) and returns the soft limit now in force, or
/// `None` where it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Caps glibc's malloc at one arena per core (at least two), unless the
/// operator set `MALLOC_ARENA_MAX`. glibc's own default is eight per core:
/// each thread that finds the arenas busy gets a new one, and every arena
/// keeps its own free chunks and partly used pages, so the same live
/// memory spread over more arenas stays resident in more pages (an idle
/// node measured 0.12 KiB more per connection, `docs/decisions.md`). Call
/// it first in `main`, before any thread starts.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = cores.clamp(2, 64) as i32;
        // SAFETY: mallopt only sets a tunable; called before threads start.
        // A refusal (it returns 0) leaves glibc's default, which is harmless.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Replaces every secret given as `file:/path` with that file's text
/// (trailing newline trimmed): the way mounted secrets (Kubernetes, Docker)
/// reach a process without appearing in its environment or config file.
/// `secrets` pairs each value with its key, which an error names (the path
/// is shown, never a secret's text).
pub fn read_secret_files(secrets: &mut [(&str, &mut String)]) -> Result<(), String> {
    for (key, secret) in secrets.iter_mut() {
        if let Some(path) = secret.strip_prefix("file:") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{key}: cannot read secret file {path}: {e}"))?;
            **secret = text.trim_end_matches(['\n', '\r']).to_string();
        }
    }
    Ok(())
}

/// Makes figment's error read as "key: problem (ENV_VAR) [source]".
fn describe(error: figment::Error, secrets: &[&str]) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(s) => format!("{} {}", m.name, s),
                    None => m.name.to_string(),
                })
                .unwrap_or_default();
            let env_hint = if source.contains("environment") {
                format!(" (ROOMCAST_{})", key.to_uppercase().replace('.', "__"))
            } else {
                String::new()
            };
            let what = if secrets.contains(&key.as_str()) {
                "invalid value (not shown: it is a secret); give it as a string".to_string()
            } else {
                e.kind.to_string()
            };
            format!("{key}: {what}{env_hint} [{source}]")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn walk_unknown(
    given: &serde_json::Value,
    known: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    let (Some(given), Some(known)) = (given.as_object(), known.as_object()) else {
        return;
    };
    for (key, value) in given {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match known.get(key) {
            Some(k) => walk_unknown(value, k, &path, out),
            None => out.push(path),
        }
    }
}

/// Every key of `T`'s configuration, dotted, with its default value as JSON
/// text: what a configuration page is checked against.
pub fn all_keys<T: Serialize + Default>() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let value = serde_json::to_value(T::default()).unwrap_or_default();
    flatten("", &value, &mut out);
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value.as_object() {
        Some(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        None => out.push((prefix.to_string(), value.to_string())),
    }
}

/// A URL fit for a log line: any `user:password@` becomes `***@`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_cut_from_urls() {
        use super::redact_url;
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://***@h:6379");
        assert_eq!(redact_url("rediss://u:p@w@h:1/0"), "rediss://***@h:1/0");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("redis-cluster://a:1?node=b:2"),
            "redis-cluster://a:1?node=b:2"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}

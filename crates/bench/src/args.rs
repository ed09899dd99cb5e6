//! Command-line flags (`--key value`, or `--flag` alone for true), with an
//! environment variable as the fallback of each, so `make bench` can be
//! scaled down without editing anything: `BENCH_IDLE_CONNS=2000 make bench`.
//! A tool that reads no environment (ws-compare) names [`NO_ENV`] instead.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};

/// The variable name of a flag that has no environment fallback.
pub const NO_ENV: &str = "";

pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    pub fn parse(argv: impl Iterator<Item = String>) -> Result<Args> {
        let mut values = HashMap::new();
        let mut argv = argv.peekable();
        while let Some(arg) = argv.next() {
            let Some(key) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}");
            };
            let value = match argv.peek() {
                Some(next) if !next.starts_with("--") => argv.next().unwrap_or_default(),
                _ => "true".to_owned(),
            };
            values.insert(key.to_owned(), value);
        }
        Ok(Args { values })
    }

    /// The flags given, without their dashes.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The flag's value, else the environment variable's (none with
    /// [`NO_ENV`]), if either is set.
    pub fn get(&self, key: &str, env: &str) -> Option<String> {
        self.values.get(key).cloned().or_else(|| {
            if env == NO_ENV {
                return None;
            }
            std::env::var(env).ok().filter(|v| !v.is_empty())
        })
    }

    pub fn string(&self, key: &str, env: &str, default: &str) -> String {
        self.get(key, env).unwrap_or_else(|| default.to_string())
    }

    pub fn num<T: FromStr>(&self, key: &str, env: &str, default: T) -> Result<T> {
        match self.get(key, env) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow!("{}: not a number: {v:?}", flag_name(key, env))),
        }
    }

    pub fn flag(&self, key: &str, env: &str) -> bool {
        matches!(self.get(key, env).as_deref(), Some("true" | "1" | "yes"))
    }

    /// A comma-separated list of numbers.
    pub fn list<T: FromStr + Clone>(&self, key: &str, env: &str, default: &[T]) -> Result<Vec<T>> {
        match self.get(key, env) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|_| anyhow!("{}: not a number: {s:?}", flag_name(key, env)))
                })
                .collect(),
        }
    }
}

/// `--key (ENV)` for error messages, or `--key` alone without a variable.
fn flag_name(key: &str, env: &str) -> String {
    if env == NO_ENV {
        format!("--{key}")
    } else {
        format!("--{key} ({env})")
    }
}

#[cfg(test)]
mod tests;

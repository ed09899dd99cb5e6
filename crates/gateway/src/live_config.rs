//! The part of the configuration that changes while the node runs: limits,
//! proxies and the log level, reloaded on SIGHUP or when the config file
//! changes (`docs/hooks.md`, "Live configuration").
//!
//! Readers take the current [`Live`] with one atomic load
//! ([`LiveConfig::get`]); a reload builds a whole new one and swaps it in,
//! so a reader never sees half of an update. Connections notice a new
//! generation on their next frame and pick up the new rate limit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use roomcast_hooks::http::Backend;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// One version of the live configuration.
pub struct Live {
    /// The whole configuration; only the reloadable parts ever differ from
    /// the startup configuration).
    pub config: Config,
    pub proxy: Proxy,
}

pub struct LiveConfig {
    current: ArcSwap<Live>,
    generation: AtomicU64,
    file: Option<PathBuf>,
    backend: Backend,
    node_id: String,
}

impl LiveConfig {
    pub fn new(config: Config, file: Option<PathBuf>, node_id: &str) -> LiveConfig {
        let backend = Backend::new();
        let proxy = Proxy::new(&config.proxy, backend.clone(), node_id);
        LiveConfig {
            current: ArcSwap::from_pointee(Live { config, proxy }),
            generation: AtomicU64::new(0),
            file,
            backend,
            node_id: node_id.to_string(),
        }
    }

    /// The current version (cheap: no reference count is touched).
    pub fn get(&self) -> arc_swap::Guard<Arc<Live>> {
        self.current.load()
    }

    /// The current version, owned (to keep across an `.await`).
    pub fn get_full(&self) -> Arc<Live> {
        self.current.load_full()
    }

    /// Bumped by every applied reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Loads the file and environment again and applies what may change
    /// live. On error the running configuration stays and the error (naming
    /// the key) is returned.
    pub fn reload(&self) -> Result<(), String> {
        let (mut new, unknown) = Config::load(self.file.as_deref()).map_err(|e| e.0)?;
        for key in unknown {
            tracing::warn!(key, "unknown configuration key ignored");
        }
        let old = self.get();
        keep_restart_only(&old.config, &mut new);
        crate::telemetry::set_log_level(&new.log.level)?;
        let proxy = Proxy::new(&new.proxy, self.backend.clone(), &self.node_id);
        self.current.store(Arc::new(Live { config: new, proxy }));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Copies into `new` every value that needs a restart, warning for each
/// one the file changed.
fn keep_restart_only(old: &Config, new: &mut Config) {
    let before = serde_json::to_value(&*new).unwrap_or_default();
    new.listen = old.listen;
    new.node = old.node.clone();
    new.redis = old.redis.clone();
    new.presence = old.presence.clone();
    new.auth = old.auth.clone();
    new.api = old.api.clone();
    new.history = old.history.clone();
    new.session = old.session.clone();
    new.heartbeat = old.heartbeat.clone();
    new.websocket = old.websocket.clone();
    new.drain = old.drain.clone();
    new.tracing = old.tracing.clone();
    new.webhooks = old.webhooks.clone();
    new.admin = old.admin.clone();
    new.log.json = old.log.json;
    new.limits.max_message_bytes = old.limits.max_message_bytes;
    let after = serde_json::to_value(&*new).unwrap_or_default();
    let mut changed = Vec::new();
    differences(&before, &after, "", &mut changed);
    for key in changed {
        tracing::warn!(
            key,
            "configuration change needs a restart; running value kept"
        );
    }
}

fn differences(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            for (k, va) in a {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match b.get(k) {
                    Some(vb) => differences(va, vb, &path, out),
                    None => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Reloads on SIGHUP, and when the config file's modification time or size
/// changes (checked every second when the node was started with a file:
/// this also sees a Kubernetes ConfigMap swapping its symlink).
pub fn spawn_watcher(
    live: &Arc<LiveConfig>,
    metrics: Arc<Metrics>,
    on_reload: impl Fn(&Live) + Send + 'static,
) {
    let weak = Arc::downgrade(live);
    let file = live.file.clone();
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let stamp = |f: &Option<PathBuf>| {
            f.as_ref().and_then(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
        };
        let mut seen = stamp(&file);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => "SIGHUP",
                // Without a config file there is nothing to look at: the
                // node does not wake every second for it.
                _ = tick.tick(), if file.is_some() => {
                    let now = stamp(&file);
                    if now == seen || now.is_none() {
                        continue;
                    }
                    seen = now;
                    "file changed"
                }
            };
            let Some(config) = weak.upgrade() else { return };
            match config.reload() {
                Ok(()) => {
                    metrics.reloads_applied.inc();
                    let live = config.get();
                    on_reload(&live);
                    tracing::info!(
                        trigger = why,
                        generation = config.generation(),
                        messages_per_second = live.config.limits.messages_per_second,
                        log_level = %live.config.log.level,
                        "configuration reloaded"
                    );
                }
                Err(e) => {
                    metrics.reloads_refused.inc();
                    tracing::error!(trigger = why, "configuration reload refused: {e}");
                }
            }
        }
    });
}

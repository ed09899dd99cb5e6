//! The one Redis connection of the presence service (fred), used for parked
//! sessions and for publishing presence events.
//!
//! It never blocks startup or requests on Redis being up: the client
//! connects in the background and reconnects forever with a capped
//! exponential backoff, and every command has a short timeout, so a Redis
//! outage shows as fast `unavailable` answers and queued events, not as
//! hung handlers. A cluster is chosen by `redis.cluster` or by a
//! `redis-cluster://` URL; then events go out with SPUBLISH (sharded
//! pub/sub), to the shard that owns the room's slot.

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, EventInterface, ReconnectPolicy};

use crate::config::{Config, ConfigError};

/// Timeout of every Redis command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A Redis client and how to publish through it.
#[derive(Clone)]
pub struct Redis {
    pub client: Client,
    /// Publish with SPUBLISH (Redis Cluster) instead of PUBLISH.
    pub sharded: bool,
}

impl Redis {
    /// Builds the client from `redis.url` / `redis.cluster` and starts
    /// connecting in the background. Needs a tokio runtime.
    pub fn connect(config: &Config) -> Result<Redis, ConfigError> {
        let sharded = config.redis_is_cluster();
        let url = cluster_url(&config.redis.url, sharded);
        let mut redis_config =
            roomcast_service::redis::redis_config(&url, &config.redis.tls_ca_file)
                .map_err(ConfigError)?;
        // Keep trying when Redis is down at startup instead of failing.
        redis_config.fail_fast = false;
        let client = Builder::from_config(redis_config)
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| ConfigError(format!("redis.url: {e}")))?;
        client.on_error(|(error, server)| async move {
            tracing::warn!(%error, server = ?server.map(|s| s.to_string()), "redis error");
            Ok(())
        });
        client.on_reconnect(|server| async move {
            tracing::info!(server = %server, "connected to redis");
            Ok(())
        });
        let _task = client.connect();
        Ok(Redis { client, sharded })
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }
}

/// fred reads a cluster from the URL scheme: `redis.cluster = true` with a
/// plain `redis://host:port` means the cluster reachable there.
fn cluster_url(url: &str, cluster: bool) -> String {
    if !cluster || url.contains("-cluster://") {
        return url.to_string();
    }
    if let Some(rest) = url.strip_prefix("rediss://") {
        format!("rediss-cluster://{rest}")
    } else if let Some(rest) = url.strip_prefix("redis://") {
        format!("redis-cluster://{rest}")
    } else {
        url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_url;

    #[test]
    fn a_cluster_flag_turns_a_plain_url_into_a_cluster_url() {
        assert_eq!(cluster_url("redis://h:1", false), "redis://h:1");
        assert_eq!(cluster_url("redis://h:1", true), "redis-cluster://h:1");
        assert_eq!(cluster_url("rediss://h:1", true), "rediss-cluster://h:1");
        assert_eq!(
            cluster_url("redis-cluster://h:1?node=h:2", true),
            "redis-cluster://h:1?node=h:2"
        );
    }
}

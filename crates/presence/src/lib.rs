//! The roomcast presence service (its client is the crate
//! `roomcast-presence-client`).
//!
//! Gateways are the source of truth for their own connections; this service
//! aggregates them cluster-wide: who owns which session (for direct sends),
//! who is in which room (presence lists and `presence_join`/`presence_leave`
//! events, emitted from here and nowhere else), node leases (a crashed
//! node's sessions are purged), and parked session records (resume and
//! drain handoff). Where things are, by name:
//!
//! - [`api`]: the JSON types of the HTTP API, shared with the client crate
//!   (re-exported from it);
//! - [`state`]: the pure state machine with every no-flap rule;
//! - [`server`]: routes, the key check, handlers;
//! - [`events`]: the queue and task publishing presence envelopes;
//! - [`webhooks`]: the state's events as webhooks to the application's
//!   backend (rooms occupied and vacated, sessions ended, joins, leaves);
//! - [`store`]: parked sessions in Redis;
//! - [`sweeper`]: lease and handoff expiry;
//! - [`config`], [`metrics`], [`redis`], [`shutdown`].

pub use roomcast_presence_client::api;
pub mod config;
pub mod events;
pub mod metrics;
pub mod redis;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod sweeper;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::ClientLike;
use parking_lot::Mutex;
use roomcast_hooks::webhook::Webhooks;

use config::Config;
use events::{EventQueue, Publisher};
use metrics::Metrics;
use server::App;
use state::State;
use store::ParkedRecords;

/// How long the publisher (and the webhooks) keep trying to send queued
/// events at exit.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);
/// How long startup waits for the first Redis connection.
const REDIS_AT_START: Duration = Duration::from_secs(2);
/// The process exits at the latest this long after the signal.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the service until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen: cannot bind {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let redis = redis::Redis::connect(&config)?;
    // Give Redis a moment, so a fresh process is ready when it says it
    // listens; but serve anyway (membership needs no Redis) if it is down.
    let connected = tokio::time::timeout(REDIS_AT_START, redis.client.wait_for_connect()).await;
    if !matches!(connected, Ok(Ok(()))) {
        tracing::warn!(url = %roomcast_service::redact_url(&config.redis.url), "redis not reachable yet; serving anyway, retrying in the background");
    }
    let metrics = Arc::new(Metrics::default());
    let events = Arc::new(EventQueue::new(config.events.max_queued, metrics.clone()));
    let webhooks = Webhooks::start(
        config.webhooks.clone(),
        roomcast_hooks::http::Backend::new(),
    );
    let incarnation = uuid::Uuid::new_v4().simple().to_string();
    let app = Arc::new(App {
        state: Mutex::new(State::new(Instant::now(), config.default_lease())),
        events: events.clone(),
        webhooks: webhooks.clone(),
        store: ParkedRecords::new(redis.client.clone()),
        redis: redis.clone(),
        metrics: metrics.clone(),
        key_hash: server::key_hash(config.presence.key.expose()),
        default_lease: config.default_lease(),
        incarnation: incarnation.clone(),
    });
    let (trigger, shutdown) = shutdown::channel();
    let publisher = tokio::spawn(
        Publisher {
            redis: redis.clone(),
            queue: events,
            metrics,
        }
        .run(shutdown.clone(), FLUSH_AT_EXIT),
    );
    let sweeper = tokio::spawn(sweeper::run(app.clone(), shutdown.clone()));
    tracing::info!(
        %incarnation,
        cluster = redis.sharded,
        keyed = app.key_hash.is_some(),
        webhooks = webhooks.is_some(),
        "roomcast presence listening on http://{addr}"
    );
    axum::serve(listener, server::router(app))
        .with_graceful_shutdown(async {
            roomcast_service::wait_for_signal().await;
            // Whatever holds a connection open, the process is gone soon.
            std::thread::spawn(|| {
                std::thread::sleep(EXIT_DEADLINE);
                eprintln!("roomcast-presence: shutdown took too long; exiting");
                std::process::exit(0);
            });
        })
        .await?;
    tracing::info!("stopping");
    trigger.fire();
    let _ = sweeper.await;
    let flush_webhooks = async {
        if let Some(webhooks) = &webhooks {
            webhooks.shutdown(FLUSH_AT_EXIT).await;
        }
    };
    let (_, _) = tokio::join!(publisher, flush_webhooks);
    let _ = redis.client.quit().await;
    Ok(())
}

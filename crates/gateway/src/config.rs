//! The gateway's configuration: one typed struct with a default for every
//! field, loaded with figment from (lowest to highest precedence) the
//! defaults, a TOML file (`--config PATH` or `ROOMCAST_CONFIG`), and
//! `ROOMCAST_…` environment variables with `__` between levels
//! (`ROOMCAST_LIMITS__MAX_MESSAGE_BYTES`). A bad value stops startup with a
//! message naming the key. `docs/configuration.md` documents every key; a
//! test checks that the page and this struct agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret string: never printed by `Debug`, never logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP and WebSocket server listens on.
    pub listen: SocketAddr,
    /// Connections the kernel may hold for the node before it accepts them
    /// (the `listen(2)` backlog; the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    pub node: NodeConfig,
    pub redis: RedisConfig,
    pub presence: PresenceConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub limits: LimitsConfig,
    pub http: HttpConfig,
    pub history: HistoryConfig,
    pub publish: PublishConfig,
    pub session: SessionConfig,
    pub heartbeat: HeartbeatConfig,
    pub websocket: WebSocketConfig,
    pub drain: DrainConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub proxy: ProxyConfig,
    pub webhooks: WebhookConfig,
    pub admin: AdminConfig,
}

/// Calls to the application's backend before the node acts (`docs/hooks.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// Sent as `Authorization: Bearer` on every proxy call, so the backend knows the caller. Empty: no header.
    pub key: Secret,
    /// Headers of the upgrade request passed to the connect proxy (lower-case names).
    pub forward_headers: Vec<String>,
    /// Proxy calls in flight at once on this node; more wait for a slot within their timeout.
    pub max_in_flight: usize,
    /// Extra attempts of a connect or join call after a connection error or a 5xx, within its timeout.
    pub retries: u32,
    pub connect: ProxyEndpoint,
    pub join: ProxyEndpoint,
    pub publish: ProxyEndpoint,
    pub rpc: ProxyEndpoint,
    /// Asked for a new expiry of a connection's token `refresh_ahead_ms` before it runs out (answer `{"result": {"expires_at": <Unix seconds>}}`); a connection not extended is closed with 4401 at its expiry.
    pub refresh: ProxyEndpoint,
    /// How long before a token's expiry the refresh proxy is asked, in milliseconds.
    pub refresh_ahead_ms: u64,
    /// Per room namespace (the part of a room name, or an RPC method, before the first `:`): endpoints that replace the ones above.
    pub namespaces: BTreeMap<String, NamespaceProxy>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            key: Secret::default(),
            forward_headers: Vec::new(),
            max_in_flight: 256,
            retries: 1,
            connect: ProxyEndpoint::default(),
            join: ProxyEndpoint::default(),
            publish: ProxyEndpoint::default(),
            rpc: ProxyEndpoint::default(),
            refresh: ProxyEndpoint::default(),
            refresh_ahead_ms: 10_000,
            namespaces: BTreeMap::new(),
        }
    }
}

/// One proxy endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyEndpoint {
    /// `http://` or `https://` URL the node POSTs to. Empty: no proxy (the node decides alone).
    pub url: String,
    /// Deadline of the whole call, retries included, in milliseconds.
    pub timeout_ms: u64,
    /// When the call fails (no answer, error status, bad body): true acts as if no proxy were set, false refuses.
    pub fail_open: bool,
}

impl Default for ProxyEndpoint {
    fn default() -> Self {
        ProxyEndpoint {
            url: String::new(),
            timeout_ms: 1_000,
            fail_open: false,
        }
    }
}

/// A namespace's own endpoints; an absent one means the top-level endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespaceProxy {
    pub join: Option<ProxyEndpoint>,
    pub publish: Option<ProxyEndpoint>,
    pub rpc: Option<ProxyEndpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TracingConfig {
    /// Export traces over OTLP. Also on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set.
    pub enabled: bool,
    /// OTLP endpoint. Empty: `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, else `http://127.0.0.1:4317` (gRPC) or `:4318` (HTTP).
    pub endpoint: String,
    /// `grpc` or `http/protobuf`. Empty: `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, else `grpc`.
    pub protocol: String,
    /// Share of new traces sampled, 0.0 to 1.0 (a sampled parent's children always are).
    pub sample_ratio: f64,
    /// Service name in traces. Empty: `OTEL_SERVICE_NAME`, else `roomcast-gateway`.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            endpoint: String::new(),
            protocol: String::new(),
            sample_ratio: 1.0,
            service_name: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster. Empty: `node-` and 8 random hex digits.
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Redis URL: `redis://[user:pass@]host:port` for one server, `redis-cluster://host:port?node=host2:port2&…` for a cluster. Empty: single-node in-memory mode.
    pub url: Secret,
    /// A Redis command that takes longer than this fails (publish answers `unavailable`), in milliseconds.
    pub command_timeout_ms: u64,
    /// PEM file of the CA that signed the Redis server's certificate (with a `rediss://` URL). Empty: the system roots.
    pub tls_ca_file: String,
    /// How often the node checks that Redis still holds its pub/sub subscriptions (and subscribes again what it lost), in milliseconds.
    pub subscription_check_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::default(),
            command_timeout_ms: 2_000,
            tls_ca_file: String::new(),
            subscription_check_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// URL of the presence service (`http://host:port`). Empty: presence is kept in this node (single-node mode only).
    pub url: String,
    /// Shared key for the presence service's internal API.
    pub key: Secret,
    /// This node's lease at the presence service, renewed every third of it, in milliseconds.
    pub lease_ms: u64,
    /// How long a session handed over by a draining node keeps its presence while its client resumes elsewhere, in milliseconds.
    pub handoff_grace_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            url: String::new(),
            key: Secret::default(),
            lease_ms: 15_000,
            handoff_grace_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Allow connections without a token. Unset: on when no JWT key is configured, off otherwise.
    pub anonymous: Option<bool>,
    /// Shared secret for HS256 tokens.
    pub jwt_secret: Secret,
    /// PEM public key (text, or a path to a file) for RS256/ES256 tokens.
    pub jwt_public_key: String,
    /// The one accepted algorithm: HS256, RS256 or ES256. Unset: HS256 when `jwt_secret` is set.
    pub jwt_algorithm: String,
    /// Key that signs resume tokens; nodes of a cluster must share it. Empty: random per process.
    pub resume_secret: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Bearer key for `/api`. Empty: the API answers 401 to every call.
    pub key: Secret,
    /// Requests with a missing or wrong key one address may make per minute; past it the address gets 429 until the minute is over.
    pub max_key_failures_per_minute: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: Secret::default(),
            max_key_failures_per_minute: 10,
        }
    }
}

/// The admin page under `/admin/` (`docs/operations.md`, "Admin page").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Serve the admin page. Off: `/admin/…` answers 404.
    pub enabled: bool,
    /// The admin page's own login key, at least 16 bytes, different from `api.key`; it also signs the session cookies, so every node of a cluster needs the same one.
    pub key: Secret,
    /// How long a login lasts, in milliseconds.
    pub session_ttl_ms: u64,
    /// Wrong keys one address may try per minute; past it the address gets 429 until the minute is over.
    pub max_login_failures_per_minute: u32,
    /// Mark the session cookie `Secure` (set it when browsers reach the node over HTTPS, through a proxy that ends TLS).
    pub secure_cookie: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            key: Secret::default(),
            session_ttl_ms: 8 * 3600 * 1000,
            max_login_failures_per_minute: 5,
            secure_cookie: false,
        }
    }
}

/// The shortest `admin.key`, in bytes.
pub const MIN_ADMIN_KEY_BYTES: usize = 16;

impl AdminConfig {
    fn validate(&self, api: &ApiConfig) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let key = self.key.expose();
        if key.len() < MIN_ADMIN_KEY_BYTES {
            let now = if key.is_empty() {
                "it is empty".to_string()
            } else {
                format!("it has {} bytes", key.len())
            };
            return Err(ConfigError(format!(
                "admin.key must be at least {MIN_ADMIN_KEY_BYTES} bytes when admin.enabled is true ({now})"
            )));
        }
        if key == api.key.expose() {
            return Err(ConfigError(
                "admin.key must differ from api.key: the admin page has its own key".into(),
            ));
        }
        if self.session_ttl_ms == 0 {
            return Err(ConfigError(
                "admin.session_ttl_ms must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest incoming WebSocket message (after inflation) and HTTP API body, in bytes.
    pub max_message_bytes: usize,
    /// Connections this node accepts before closing new ones with 1013.
    pub max_connections: usize,
    /// Sockets one IP address may hold in any state, counted from `accept`; one more is closed at once. 0: no limit.
    pub max_connections_per_ip: usize,
    /// Connections one user may hold across the cluster (counted through
    /// the presence service; per node without one); one more is refused
    /// with 4409 after its `hello`. 0: no limit.
    pub max_connections_per_user: usize,
    /// Sockets accepted that have not yet sent a whole request head, on the whole node; one more is closed at once.
    pub max_pending_handshakes: usize,
    /// Sustained frames per second one connection may send.
    pub messages_per_second: u32,
    /// Frames one connection may send in a burst above the rate.
    pub message_burst: u32,
    /// Rate-limited frames in a row before the connection is closed with 4429.
    pub rate_limit_strikes: u32,
    /// Rooms one connection may be in.
    pub max_rooms_per_connection: usize,
    /// Longest room name, in bytes.
    pub max_room_name_bytes: usize,
    /// Frames waiting to be written to one connection before it is closed with 4508.
    pub outbound_queue_frames: usize,
    /// Bytes waiting to be written to one connection before it is closed with 4508.
    pub outbound_queue_bytes: usize,
    /// Undecodable frames in a row before the connection is closed with 4400.
    pub max_bad_frames: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_connections: 50_000,
            max_connections_per_ip: 2_000,
            max_connections_per_user: 0,
            max_pending_handshakes: 10_000,
            messages_per_second: 100,
            message_burst: 200,
            rate_limit_strikes: 20,
            max_rooms_per_connection: 100,
            max_room_name_bytes: 128,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 1024 * 1024,
            max_bad_frames: 10,
        }
    }
}

/// The HTTP layer in front of the WebSocket upgrade and the API: how long a
/// socket may take over each part of a request, and how large a head may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Time to send a whole request head: from `accept`, or from the first byte of a later request on a kept-alive connection, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time to send a whole request body, from the end of its head, in milliseconds.
    pub body_timeout_ms: u64,
    /// Time a kept-alive connection may wait for its next request, from the end of the last response, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers), in bytes; a larger one is answered 431 and closed.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 32 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryConfig {
    /// Messages kept per room for recovery.
    pub size: usize,
    /// How long a message stays in history, in milliseconds.
    pub ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            ttl_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PublishConfig {
    /// How long a publish's idempotency key (`key`, `Idempotency-Key`) is remembered per room, in milliseconds.
    pub idempotency_window_ms: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            idempotency_window_ms: 120_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// How long a session stays resumable after its connection ends, in milliseconds.
    pub ttl_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { ttl_ms: 120_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HeartbeatConfig {
    /// Silence after which the node pings a connection, in milliseconds.
    pub ping_interval_ms: u64,
    /// Time after a ping within which the client must show a sign of life, in milliseconds.
    pub pong_timeout_ms: u64,
    /// Time a new connection has to send `hello`, in milliseconds.
    pub hello_timeout_ms: u64,
    /// Whether the heartbeat writes an idle connection's ping straight to
    /// its socket instead of waking the connection's task for it.
    pub direct_ping: bool,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            hello_timeout_ms: 10_000,
            direct_ping: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebSocketConfig {
    /// Negotiate permessage-deflate when the client offers it.
    pub compression: bool,
    /// Outgoing messages smaller than this many bytes are sent uncompressed.
    pub compression_threshold: usize,
    /// Initial read buffer per connection, in bytes (grows for large frames, then shrinks back).
    pub read_buffer_bytes: usize,
    /// Bytes of frames gathered before they are written to the socket in one
    /// write; the buffer is allocated on demand and shrinks back after a burst.
    pub write_buffer_bytes: usize,
    /// Allowed `Origin` values for upgrades; empty allows any origin.
    pub allowed_origins: Vec<String>,
    /// Whether a room message is written straight to a member's socket by
    /// the thread that fans it out, when the member has nothing queued,
    /// instead of waking the member's task to write it. Only messages sent
    /// uncompressed (under `compression_threshold`) go this way.
    pub direct_writes: bool,
    /// Path of an endpoint that echoes every text and binary message back,
    /// through the node's own connection code, for conformance tests
    /// (Autobahn). Empty: off. Never on in production.
    pub echo_path: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            compression: true,
            compression_threshold: 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 1024,
            allowed_origins: Vec::new(),
            direct_writes: true,
            echo_path: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainConfig {
    /// Time over which clients are told to reconnect, in spread-out batches, in milliseconds.
    pub window_ms: u64,
    /// The process exits at the latest this long after SIGTERM, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            window_ms: 10_000,
            timeout_ms: 30_000,
        }
    }
}

/// Webhooks: a single node sends its own; in a cluster the presence service does.
pub use roomcast_hooks::webhook::WebhookConfig;
/// Logging settings, the same for every roomcast process.
pub use roomcast_service::LogConfig;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_backlog: 4096,
            node: NodeConfig::default(),
            redis: RedisConfig::default(),
            presence: PresenceConfig::default(),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            limits: LimitsConfig::default(),
            http: HttpConfig::default(),
            history: HistoryConfig::default(),
            publish: PublishConfig::default(),
            session: SessionConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            websocket: WebSocketConfig::default(),
            drain: DrainConfig::default(),
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
            proxy: ProxyConfig::default(),
            webhooks: WebhookConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// The JWT algorithm pinned by `auth.jwt_algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `ROOMCAST_*` variables;
    /// returns the configuration and the keys no field knows.
    pub fn load(file: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let (mut config, unknown): (Config, _) =
            roomcast_service::load(file, &SECRET_KEYS).map_err(ConfigError)?;
        config.read_secret_files()?;
        config.validate()?;
        Ok((config, unknown))
    }

    /// A secret given as `file:/path` is read from that file (trailing
    /// newline trimmed): the way mounted secrets (Kubernetes, Docker) reach
    /// the node without appearing in its environment or config file.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        roomcast_service::read_secret_files(&mut [
            ("proxy.key", &mut self.proxy.key.0),
            ("webhooks.secret", &mut self.webhooks.secret),
            ("auth.jwt_secret", &mut self.auth.jwt_secret.0),
            ("auth.resume_secret", &mut self.auth.resume_secret.0),
            ("api.key", &mut self.api.key.0),
            ("admin.key", &mut self.admin.key.0),
            ("presence.key", &mut self.presence.key.0),
            ("redis.url", &mut self.redis.url.0),
        ])
        .map_err(ConfigError)
    }

    /// Checks values that have a valid type but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("listen_backlog", self.listen_backlog as u64),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.messages_per_second",
                self.limits.messages_per_second as u64,
            ),
            ("limits.message_burst", self.limits.message_burst as u64),
            (
                "limits.rate_limit_strikes",
                self.limits.rate_limit_strikes as u64,
            ),
            (
                "limits.max_rooms_per_connection",
                self.limits.max_rooms_per_connection as u64,
            ),
            (
                "limits.max_room_name_bytes",
                self.limits.max_room_name_bytes as u64,
            ),
            (
                "limits.outbound_queue_frames",
                self.limits.outbound_queue_frames as u64,
            ),
            (
                "limits.outbound_queue_bytes",
                self.limits.outbound_queue_bytes as u64,
            ),
            ("limits.max_bad_frames", self.limits.max_bad_frames as u64),
            (
                "publish.idempotency_window_ms",
                self.publish.idempotency_window_ms,
            ),
            (
                "limits.max_pending_handshakes",
                self.limits.max_pending_handshakes as u64,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            ("history.size", self.history.size as u64),
            ("history.ttl_ms", self.history.ttl_ms),
            ("session.ttl_ms", self.session.ttl_ms),
            (
                "heartbeat.ping_interval_ms",
                self.heartbeat.ping_interval_ms,
            ),
            ("heartbeat.pong_timeout_ms", self.heartbeat.pong_timeout_ms),
            (
                "heartbeat.hello_timeout_ms",
                self.heartbeat.hello_timeout_ms,
            ),
            (
                "websocket.read_buffer_bytes",
                self.websocket.read_buffer_bytes as u64,
            ),
            (
                "websocket.write_buffer_bytes",
                self.websocket.write_buffer_bytes as u64,
            ),
            ("drain.timeout_ms", self.drain.timeout_ms),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms),
            (
                "redis.subscription_check_ms",
                self.redis.subscription_check_ms,
            ),
            ("presence.lease_ms", self.presence.lease_ms),
            ("proxy.max_in_flight", self.proxy.max_in_flight as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be greater than 0")));
            }
        }
        if self.http.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError(format!(
                "http.max_header_bytes ({}) must be at least {MIN_HEADER_BYTES}",
                self.http.max_header_bytes
            )));
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return Err(ConfigError(
                "tracing.sample_ratio must be between 0.0 and 1.0".into(),
            ));
        }
        if !["", "grpc", "http/protobuf", "http"].contains(&self.tracing.protocol.as_str()) {
            return Err(ConfigError(
                "tracing.protocol must be grpc or http/protobuf".into(),
            ));
        }
        if self.drain.window_ms >= self.drain.timeout_ms {
            return Err(ConfigError(format!(
                "drain.window_ms ({}) must be less than drain.timeout_ms ({})",
                self.drain.window_ms, self.drain.timeout_ms
            )));
        }
        let url = self.redis.url.expose();
        let redis_scheme = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
        ]
        .iter()
        .any(|scheme| url.starts_with(scheme));
        if !url.is_empty() && !redis_scheme {
            return Err(ConfigError(
                "redis.url must start with redis://, rediss://, redis-cluster:// or rediss-cluster://".into(),
            ));
        }
        if !url.is_empty() && self.auth.resume_secret.expose().is_empty() {
            return Err(ConfigError(
                "auth.resume_secret must be set (the same on every node) when redis.url is set"
                    .into(),
            ));
        }
        if !self.presence.url.is_empty() && url.is_empty() {
            return Err(ConfigError(
                "presence.url needs redis.url: the presence service serves a cluster".into(),
            ));
        }
        let presence = &self.presence.url;
        let http = presence.starts_with("http://") || presence.starts_with("https://");
        if !presence.is_empty() && !http {
            return Err(ConfigError("presence.url must start with http://".into()));
        }
        if self.jwt_algorithm()?.is_none() && self.auth.anonymous == Some(false) {
            return Err(ConfigError(
                "auth.anonymous is false but no auth.jwt_secret or auth.jwt_public_key is set: nobody could connect".into(),
            ));
        }
        self.validate_proxy()?;
        self.admin.validate(&self.api)?;
        validate_echo_path(&self.websocket.echo_path)?;
        self.webhooks.validate("webhooks").map_err(ConfigError)?;
        if !self.webhooks.url.is_empty() && !self.presence.url.is_empty() {
            return Err(ConfigError(
                "webhooks.url: in a cluster the presence service sends webhooks; set webhooks.* there, not on the gateways".into(),
            ));
        }
        if !self.node.id.is_empty()
            && !self
                .node
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError(
                "node.id may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), ConfigError> {
        let p = &self.proxy;
        let mut endpoints: Vec<(String, &ProxyEndpoint)> = vec![
            ("proxy.connect".into(), &p.connect),
            ("proxy.join".into(), &p.join),
            ("proxy.publish".into(), &p.publish),
            ("proxy.rpc".into(), &p.rpc),
            ("proxy.refresh".into(), &p.refresh),
        ];
        for (ns, n) in &p.namespaces {
            if ns.is_empty() || ns.contains(':') {
                return Err(ConfigError(format!(
                    "proxy.namespaces.{ns:?}: a namespace is a non-empty name without ':'"
                )));
            }
            for (call, e) in [("join", &n.join), ("publish", &n.publish), ("rpc", &n.rpc)] {
                if let Some(e) = e {
                    endpoints.push((format!("proxy.namespaces.{ns}.{call}"), e));
                }
            }
        }
        for (key, e) in endpoints {
            let http = e.url.starts_with("http://") || e.url.starts_with("https://");
            if !e.url.is_empty() && (!http || e.url.parse::<http::Uri>().is_err()) {
                return Err(ConfigError(format!(
                    "{key}.url must be an http:// or https:// URL"
                )));
            }
            if e.timeout_ms == 0 {
                return Err(ConfigError(format!(
                    "{key}.timeout_ms must be greater than 0"
                )));
            }
        }
        if !p.refresh.url.is_empty() && p.refresh_ahead_ms <= p.refresh.timeout_ms {
            return Err(ConfigError(
                "proxy.refresh_ahead_ms must be greater than proxy.refresh.timeout_ms".into(),
            ));
        }
        for h in &p.forward_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ConfigError(format!(
                    "proxy.forward_headers: {h:?} is not a header name"
                )));
            }
        }
        Ok(())
    }

    /// The pinned JWT algorithm, `None` when no key is configured.
    pub fn jwt_algorithm(&self) -> Result<Option<JwtAlgorithm>, ConfigError> {
        let has_secret = !self.auth.jwt_secret.0.is_empty();
        let has_public = !self.auth.jwt_public_key.is_empty();
        let alg = match self.auth.jwt_algorithm.to_ascii_uppercase().as_str() {
            "" if has_secret => JwtAlgorithm::Hs256,
            "" if has_public => {
                return Err(ConfigError(
                    "auth.jwt_algorithm must be set (RS256 or ES256) with auth.jwt_public_key"
                        .into(),
                ))
            }
            "" => return Ok(None),
            "HS256" => JwtAlgorithm::Hs256,
            "RS256" => JwtAlgorithm::Rs256,
            "ES256" => JwtAlgorithm::Es256,
            other => {
                return Err(ConfigError(format!(
                    "auth.jwt_algorithm: {other:?} is not one of HS256, RS256, ES256"
                )))
            }
        };
        match alg {
            JwtAlgorithm::Hs256 if !has_secret => Err(ConfigError(
                "auth.jwt_algorithm HS256 needs auth.jwt_secret".into(),
            )),
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 if !has_public => Err(ConfigError(format!(
                "auth.jwt_algorithm {alg:?} needs auth.jwt_public_key"
            ))),
            _ => Ok(Some(alg)),
        }
    }

    /// Whether connections without a token are accepted.
    pub fn anonymous_allowed(&self) -> bool {
        let no_key = self.auth.jwt_secret.0.is_empty() && self.auth.jwt_public_key.is_empty();
        self.auth.anonymous.unwrap_or(no_key)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat.ping_interval_ms)
    }
}

/// Paths the node serves itself (`server::router`); the echo
/// endpoint may take none of them, nor a path below `/api` or `/demo`.
const RESERVED_PATHS: [&str; 5] = ["/", "/ws", "/healthz", "/readyz", "/metrics"];
const RESERVED_PREFIXES: [&str; 2] = ["/api", "/demo"];

/// `websocket.echo_path`: empty, or a plain absolute path of its own.
fn validate_echo_path(path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| Err(ConfigError(format!("websocket.echo_path {path:?} {why}")));
    if !path.starts_with('/') {
        return refuse("must start with '/'".into());
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-._~".contains(*c)))
    {
        return refuse(format!(
            "may contain only letters, digits and / - . _ ~ (found {c:?})"
        ));
    }
    if path.contains("//") {
        return refuse("must not contain an empty segment ('//')".into());
    }
    if RESERVED_PATHS.contains(&path) {
        return refuse("is a route of the node already; pick another path".into());
    }
    if let Some(prefix) = RESERVED_PREFIXES
        .iter()
        .find(|p| path == **p || path.starts_with(&format!("{p}/")))
    {
        return refuse(format!(
            "is under {prefix}, which the node serves; pick another path"
        ));
    }
    Ok(())
}

/// The smallest `http.max_header_bytes`: below it, a browser's ordinary
/// upgrade request (cookies, user agent, WebSocket headers) would not fit.
pub const MIN_HEADER_BYTES: usize = 1024;

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 8] = [
    "admin.key",
    "proxy.key",
    "webhooks.secret",
    "auth.jwt_secret",
    "auth.resume_secret",
    "api.key",
    "presence.key",
    "redis.url",
];

/// Every key of the configuration, dotted, with its default value: the
/// list `docs/configuration.md` is checked against.
pub fn all_keys() -> Vec<(String, String)> {
    roomcast_service::all_keys::<Config>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_in_configuration_md() {
        let doc = std::fs::read_to_string(
            roomcast_testkit::workspace_root().join("docs/configuration.md"),
        )
        .expect("docs/configuration.md");
        for (key, _) in all_keys() {
            let env = format!("ROOMCAST_{}", key.to_uppercase().replace('.', "__"));
            assert!(doc.contains(&format!("`{key}`")), "{key} is not documented");
            assert!(doc.contains(&env), "{env} is not documented");
        }
    }

    #[test]
    fn secrets_can_come_from_files() {
        let path = std::env::temp_dir().join(format!("roomcast-secret-{}", std::process::id()));
        std::fs::write(&path, "from-a-file\n").unwrap();
        let mut config = Config::default();
        config.api.key = Secret(format!("file:{}", path.display()));
        config.read_secret_files().unwrap();
        assert_eq!(config.api.key.expose(), "from-a-file");
        config.auth.jwt_secret = Secret("file:/nonexistent/roomcast".into());
        let err = config.read_secret_files().unwrap_err().to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_zero_listen_backlog_is_refused_by_name() {
        let config = Config {
            listen_backlog: 0,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("listen_backlog"), "{err}");
    }

    #[test]
    fn a_bad_echo_path_is_refused_by_name() {
        for bad in [
            "echo",
            "/ws",
            "/",
            "/metrics",
            "/api",
            "/api/echo",
            "/demo/",
            "/a//b",
            "/{x}",
            "/a b",
        ] {
            let mut config = Config::default();
            config.websocket.echo_path = bad.into();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("websocket.echo_path"), "{bad}: {err}");
        }
        for good in ["", "/echo", "/conformance/echo", "/wsecho", "/apis"] {
            let mut config = Config::default();
            config.websocket.echo_path = good.into();
            config.validate().unwrap();
        }
    }

    #[test]
    fn bad_http_limits_are_refused_by_name() {
        let mut config = Config::default();
        config.http.header_read_timeout_ms = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http.header_read_timeout_ms"), "{err}");
        let mut config = Config::default();
        config.http.max_header_bytes = 100;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http.max_header_bytes"), "{err}");
        let mut config = Config::default();
        config.limits.max_pending_handshakes = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_pending_handshakes"), "{err}");
    }
}

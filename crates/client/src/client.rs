//! The public handle: commands whose replies come back as futures.
//!
//! A [`Client`] is a cheap, cloneable handle onto the task that owns the
//! connection (see `driver.rs`). Each command is handed to that task, which
//! gives it a fresh `id`, sends it, and completes the command's future when
//! the reply with that `id` arrives: a typed value, or [`Error::Server`]
//! carrying the protocol's error code. A command that cannot be sent because
//! the client is between connections fails with [`Error::Disconnected`], as
//! does one whose connection drops before the reply, except a publish: every
//! publish carries an idempotency key, so the task keeps it across the
//! reconnect and sends it again with the same key (the node stores one key
//! once per room), and retries it after `unavailable`.
//!
//! Dropping every handle closes the connection and stops the task, as does
//! [`Client::close`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use roomcast_protocol::{
    valid_idempotency_key, ClientFrame, Data, Member, ServerFrame, Since, Target,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Command, Driver};
use crate::events::{ConnectionState, Events, SessionInfo};
pub use crate::pending::Published;
use crate::{ClientBuilder, Error};

/// Commands queued towards the connection task before callers wait.
const COMMAND_QUEUE: usize = 256;

/// A connection to roomcast that survives reconnects.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    request_timeout: Duration,
    /// The connection's token expiry (Unix seconds), 0 when unknown.
    token_expiry: Arc<AtomicU64>,
}

/// Options of a publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The idempotency key: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
    /// Default: a fresh random key ([`new_publish_key`]). Give your own to
    /// make a publish idempotent across clients or restarts of your process.
    pub key: Option<String>,
}

const KEY_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A fresh idempotency key: 22 characters of the base64url alphabet (132
/// random bits).
pub fn new_publish_key() -> String {
    let mut rng = rand::thread_rng();
    (0..22)
        .map(|_| char::from(KEY_ALPHABET[rng.gen_range(0..64)]))
        .collect()
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub room: String,
    /// The room's latest offset when the join happened; live messages follow
    /// it.
    pub offset: u64,
    pub epoch: String,
    /// Only for a join with `since`: whether the messages after it are being
    /// replayed (they follow as events). `Some(false)` means nothing is
    /// replayed and the application should re-sync the room.
    pub recovered: Option<bool>,
}

/// Options of a join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Replay the messages after this position (offset and epoch), when the
    /// room's history still has them.
    pub since: Option<Since>,
    /// Receive `presence_join` / `presence_leave` events for the room.
    pub presence: bool,
}

impl Client {
    /// A builder to configure URLs, codec, token, backoff and timeouts.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Connects to one URL with every other setting at its default.
    pub async fn connect(url: impl Into<String>) -> Result<(Client, Events), Error> {
        Client::builder().url(url).connect().await
    }

    pub(crate) async fn start(config: crate::config::Config) -> Result<(Client, Events), Error> {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting {
            url: config.urls[0].to_string(),
            attempt: 1,
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let request_timeout = config.request_timeout;
        let token_expiry = Arc::new(AtomicU64::new(0));
        tokio::spawn(
            Driver::new(
                config,
                command_rx,
                event_tx,
                state_tx,
                ready_tx,
                token_expiry.clone(),
            )
            .run(),
        );
        match ready_rx.await {
            Ok(Ok(_session)) => Ok((
                Client {
                    commands,
                    state,
                    request_timeout,
                    token_expiry,
                },
                Events::new(event_rx),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// The connection state right now.
    pub fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// The current session, while connected.
    pub fn session(&self) -> Option<SessionInfo> {
        match &*self.state.borrow() {
            ConnectionState::Connected { session, .. } => Some(session.clone()),
            _ => None,
        }
    }

    /// Waits until the client is connected (returns at once if it is), or
    /// fails with [`Error::Closed`] if it stops first.
    pub async fn wait_connected(&self) -> Result<SessionInfo, Error> {
        let mut state = self.state.clone();
        let result = state
            .wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected { .. } | ConnectionState::Disconnected { .. }
                )
            })
            .await;
        match result.as_deref() {
            Ok(ConnectionState::Connected { session, .. }) => Ok(session.clone()),
            _ => Err(Error::Closed),
        }
    }

    /// Joins `room`, without replay and without presence events.
    pub async fn join(&self, room: impl Into<String>) -> Result<Joined, Error> {
        self.join_with(room, JoinOptions::default()).await
    }

    /// Joins `room` with a replay position and/or presence events. The room
    /// is then kept across reconnects: resumed, or joined again with the
    /// last offset received.
    pub async fn join_with(
        &self,
        room: impl Into<String>,
        options: JoinOptions,
    ) -> Result<Joined, Error> {
        let frame = ClientFrame::Join {
            id: None,
            room: room.into(),
            since: options.since,
            presence: options.presence.then_some(true),
        };
        match self.request(frame).await? {
            ServerFrame::Joined {
                room,
                offset,
                epoch,
                recovered,
                ..
            } => Ok(Joined {
                room,
                offset,
                epoch,
                recovered,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Leaves `room`; its messages stop at once, even before the reply. A
    /// room the node joined the connection to by itself (a server-side
    /// subscription, [`crate::Event::Joined`]) stays left: when the node joins
    /// a later connection to it again, the client leaves it again, until a
    /// [`Client::join`] of it succeeds (the node allows joining a room of the
    /// token's `subs` again).
    pub async fn leave(&self, room: impl Into<String>) -> Result<(), Error> {
        let frame = ClientFrame::Leave {
            id: None,
            room: room.into(),
        };
        match self.request(frame).await? {
            ServerFrame::Left { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes `data` to `room` under a fresh idempotency key; resolves to
    /// the message's offset once the server stored it (see
    /// [`Client::publish_with`]).
    pub async fn publish(&self, room: impl Into<String>, data: Data) -> Result<u64, Error> {
        self.publish_with(room, data, PublishOptions::default())
            .await
            .map(|p| p.offset)
    }

    /// Publishes `data` to `room` under an idempotency key (the options' or
    /// a fresh one) and resolves once the server stored it.
    ///
    /// When the connection drops before the `ack`, the publish waits for the
    /// next connection and is sent again with the same key; an `unavailable`
    /// answer is retried with backoff. The node stores a key once per room
    /// (within its idempotency window), so the message is stored and
    /// delivered once: [`Published::duplicate`] tells that the node had it
    /// already. Bounded by the request timeout ([`Error::Timeout`]) and the
    /// builder's `publish_attempts` ([`Error::Disconnected`] or the last
    /// server error). A publish issued while there is no connection fails at
    /// once with [`Error::Disconnected`].
    pub async fn publish_with(
        &self,
        room: impl Into<String>,
        data: Data,
        options: PublishOptions,
    ) -> Result<Published, Error> {
        let key = match options.key {
            Some(key) if valid_idempotency_key(&key) => key,
            Some(key) => return Err(Error::InvalidKey(key)),
            None => new_publish_key(),
        };
        let room = room.into();
        let exchange = async {
            let (reply, rx) = oneshot::channel();
            self.commands
                .send(Command::Publish {
                    room,
                    data,
                    key,
                    reply,
                })
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.unwrap_or(Err(Error::Closed))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout(self.request_timeout)))
    }

    /// When the current connection's token expires (Unix seconds), as the
    /// node said in `welcome` (`token_expires_at`) and in each `refreshed`
    /// (the node's own extensions, a `refreshed` without `id`, included);
    /// `None` without a token, with a token without `exp`, or between
    /// connections.
    pub fn token_expires_at(&self) -> Option<u64> {
        match self.token_expiry.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// Refreshes the connection's token now: asks the token provider for a
    /// token and sends it with `refresh`. Resolves to the new expiry (Unix
    /// seconds). The automatic refreshes are planned from it. On an error
    /// (`unauthorized`, `forbidden` for another user's token) the old token
    /// stands. Needs a token provider ([`Error::Config`] otherwise).
    pub async fn refresh_token(&self) -> Result<Option<u64>, Error> {
        let exchange = async {
            let (reply, rx) = oneshot::channel();
            self.commands
                .send(Command::Refresh { reply })
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.unwrap_or(Err(Error::Closed))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout(self.request_timeout)))
    }

    /// Sends `data` directly to a user (all its connections) or a session.
    /// The reply means accepted for delivery, not delivered.
    pub async fn send(&self, to: Target, data: Data) -> Result<(), Error> {
        let frame = ClientFrame::Send { id: None, to, data };
        match self.request(frame).await? {
            ServerFrame::Ack { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// [`Client::send`] to every connection of `user`.
    pub async fn send_to_user(&self, user: impl Into<String>, data: Data) -> Result<(), Error> {
        self.send(Target::user(user), data).await
    }

    /// [`Client::send`] to one session.
    pub async fn send_to_session(
        &self,
        session: impl Into<String>,
        data: Data,
    ) -> Result<(), Error> {
        self.send(Target::session(session), data).await
    }

    /// The members of `room`.
    pub async fn presence(&self, room: impl Into<String>) -> Result<Vec<Member>, Error> {
        let frame = ClientFrame::Presence {
            id: None,
            room: room.into(),
        };
        match self.request(frame).await? {
            ServerFrame::Presence { members, .. } => Ok(members),
            other => Err(unexpected(&other)),
        }
    }

    /// Calls `method` on the application's backend through the node's RPC
    /// proxy (`docs/hooks.md`); resolves to the backend's `data`.
    pub async fn rpc(&self, method: impl Into<String>, data: Data) -> Result<Data, Error> {
        let frame = ClientFrame::Rpc {
            id: None,
            method: method.into(),
            data,
        };
        match self.request(frame).await? {
            ServerFrame::RpcResult { data, .. } => Ok(data),
            other => Err(unexpected(&other)),
        }
    }

    /// A protocol `ping`; resolves to the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        match self.request(ClientFrame::Ping { id: None }).await? {
            ServerFrame::Pong { .. } => Ok(started.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `frame` exactly as given, on the current connection. Its reply,
    /// if any, arrives as [`crate::Event::Unmatched`] (or
    /// [`crate::Event::ServerError`]). The client's own commands use ids
    /// counting up from 1; give raw frames ids far from those (or none) to
    /// keep their replies apart. For tests and experiments.
    pub async fn raw_send(&self, frame: ClientFrame) -> Result<(), Error> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Raw { frame, done })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Cuts the current socket without a close handshake, as a network
    /// failure would, and reconnects after `reconnect_after` (instead of the
    /// backoff delay), resuming the session. For tests.
    pub async fn drop_connection_for_test(&self, reconnect_after: Duration) {
        let _ = self
            .commands
            .send(Command::DropConnection { reconnect_after })
            .await;
    }

    /// Closes the connection cleanly and stops the client; waits until it
    /// has. Commands on any handle fail with [`Error::Closed`] from then on.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Sends a command and waits for its reply frame (errors already mapped).
    async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, Error> {
        let exchange = async {
            let (reply, rx) = oneshot::channel();
            self.commands
                .send(Command::Request { frame, reply })
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.unwrap_or(Err(Error::Closed))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout(self.request_timeout)))
    }
}

fn unexpected(frame: &ServerFrame) -> Error {
    Error::UnexpectedReply(frame.kind().to_string())
}

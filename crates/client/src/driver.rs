//! The task behind a [`crate::Client`]: one session kept alive across many
//! connections.
//!
//! The task owns everything that must outlive a socket: the rooms the client
//! is in and its position in each, the session's resume ticket, the commands
//! waiting for replies. Its life is a loop of three steps:
//!
//! 1. **establish**: pick the next URL, open a [`Connection`], send `hello`
//!    (with `resume` once there was a session) and wait for `welcome`;
//! 2. **serve**: restore the rooms (resumed by the server, or re-joined with
//!    `since` when the resume failed), then route frames to events and
//!    replies, commands to the socket, and let the heartbeat watchdog judge
//!    the silence;
//! 3. **pause**: when the connection ends or an attempt fails, fail what was
//!    in flight with `Disconnected` (publishes excepted: they wait in the
//!    outbox), wait as the backoff policy (or the server's `reconnect`
//!    notice) says, and start again.
//!
//! Publishes carry an idempotency key and are kept until settled: one in
//! flight when a connection ends is sent again, with the same key, right
//! after the next `welcome` and the rooms' restoration; one answered
//! `unavailable` is sent again after a backoff. A token that expires is
//! refreshed on the live connection (`refresh`) before it does, with a token
//! from the provider; a `refreshed` without `id` (the node extended the token
//! by itself) moves the expiry and the plan.
//!
//! A `joined` without `id` (a server-side subscription, right after
//! `welcome`) makes the room one of the session's rooms like any other. A
//! subscription the application left is left again when the node joins the
//! connection to it after a reconnect.
//!
//! It stops when the client is closed or every handle is dropped, when the
//! backoff policy gives up, or when the server keeps refusing the token.
//! Commands that arrive while there is no connection fail at once with
//! `Disconnected` rather than queueing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roomcast_protocol::{
    ClientFrame, ErrorCode, Resume, ResumeRoom, RoomStatus, ServerFrame, Since,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use url::Url;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::connection::{Connection, Incoming, SendError};
use crate::dedup::Positions;
use crate::events::{
    ConnectionState, DirectMessage, DisconnectCause, Event, RoomMessage, SessionInfo,
};
use crate::pending::{published, Asked, Pending, PendingTable, PublishJob, Published, Waiter};
use crate::rooms::Rooms;
use crate::watchdog::{Verdict, Watchdog};
use crate::Error;

/// A server that refuses a freshly provided token this many times in a row is
/// not going to accept the next one either.
const MAX_REFUSALS: u32 = 2;
/// A session shorter than this does not reset the backoff, so a node that
/// accepts and drops connections at once is not hammered.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Automatic refreshes tried in a row before the client leaves it to the
/// node's 4401 close and a reconnect with a fresh token.
const REFRESH_ATTEMPTS: u32 = 3;
/// Waits between the sends of a publish answered `unavailable`.
const PUBLISH_RETRY: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(2),
    max_attempts: None,
};

/// What a [`crate::Client`] handle asks of the task.
pub(crate) enum Command {
    /// Send `frame` with a fresh `id` and hand back its reply.
    Request {
        frame: ClientFrame,
        reply: oneshot::Sender<Result<ServerFrame, Error>>,
    },
    /// Publish under `key`, kept across reconnects until settled.
    Publish {
        room: String,
        data: roomcast_protocol::Data,
        key: String,
        reply: oneshot::Sender<Result<Published, Error>>,
    },
    /// Refresh the token now.
    Refresh {
        reply: oneshot::Sender<Result<Option<u64>, Error>>,
    },
    /// Send `frame` exactly as given.
    Raw {
        frame: ClientFrame,
        done: oneshot::Sender<Result<(), Error>>,
    },
    /// Cut the socket without a close handshake, reconnect after the delay.
    DropConnection { reconnect_after: Duration },
    /// Close cleanly and stop.
    Close { done: oneshot::Sender<()> },
}

/// The task must stop; `Some` when a `close()` caller waits to hear it did.
struct Halt(Option<oneshot::Sender<()>>);

/// Why a connection (or an attempt) ended, and when the server asked us to
/// come back.
struct Failure {
    cause: DisconnectCause,
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(cause: DisconnectCause) -> Self {
        Failure {
            cause,
            retry_after: None,
        }
    }

    fn connect(message: impl Into<String>) -> Self {
        Failure::new(DisconnectCause::ConnectFailed(message.into()))
    }

    fn lost(message: impl Into<String>) -> Self {
        Failure::new(DisconnectCause::ConnectionLost(message.into()))
    }
}

/// The parts of `welcome` the session needs.
struct Welcome {
    session: String,
    resume_token: String,
    user: String,
    node: String,
    ping_interval: Duration,
    resumed: bool,
    rooms: Vec<RoomStatus>,
    token_expires_at: Option<u64>,
}

/// The token refresh of the current connection.
#[derive(Default)]
struct Refresh {
    /// When `welcome` or the last `refreshed` says the token expires (Unix
    /// seconds).
    expires_at: Option<u64>,
    /// When to ask the provider for the next token.
    at: Option<tokio::time::Instant>,
    /// Automatic refreshes that failed in a row.
    failures: u32,
    /// The provider's answer on its way.
    fetching: Option<oneshot::Receiver<Result<String, String>>>,
    /// The `refresh` sent, waiting for `refreshed`.
    in_flight: Option<u64>,
    /// Whether the refresh under way was asked for by `refresh_token`.
    manual: bool,
    /// `refresh_token` callers.
    waiters: Vec<oneshot::Sender<Result<Option<u64>, Error>>>,
}

/// Consecutive bad luck, which decides the next delay and when to give up.
#[derive(Default)]
struct Streak {
    /// Attempts that failed since the last `welcome`.
    failures: u32,
    /// Sessions in a row that ended before [`STABLE_SESSION`].
    quick_drops: u32,
    /// Token refusals since the last `welcome`.
    refusals: u32,
}

pub(crate) struct Driver {
    config: Config,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    state: watch::Sender<ConnectionState>,
    /// Told about the first `welcome` (or the reason there will be none).
    ready: Option<oneshot::Sender<Result<SessionInfo, Error>>>,
    rooms: Rooms,
    positions: Positions,
    pending: PendingTable,
    /// Session id and resume token from the last `welcome`.
    ticket: Option<(String, String)>,
    next_url: usize,
    /// Publishes waiting for the next connection.
    outbox: Vec<PublishJob>,
    /// Publishes waiting out a retry delay after `unavailable`.
    delayed: Vec<(tokio::time::Instant, PublishJob)>,
    publish_seq: u64,
    refresh: Refresh,
    /// Shared with the handles: the token's expiry, 0 when unknown.
    token_expiry: Arc<AtomicU64>,
    /// Rooms the node joined the current connection to by itself.
    server_rooms: HashSet<String>,
    /// Server-side subscriptions the application left: left again whenever
    /// the node joins a connection to them, until the application joins
    /// one successfully.
    declined: HashSet<String>,
    /// Leaves of `declined` rooms to send on the current connection.
    to_leave: Vec<String>,
}

impl Driver {
    pub(crate) fn new(
        config: Config,
        commands: mpsc::Receiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        state: watch::Sender<ConnectionState>,
        ready: oneshot::Sender<Result<SessionInfo, Error>>,
        token_expiry: Arc<AtomicU64>,
    ) -> Self {
        Driver {
            config,
            commands,
            events,
            state,
            ready: Some(ready),
            rooms: Rooms::default(),
            positions: Positions::default(),
            pending: PendingTable::default(),
            ticket: None,
            next_url: 0,
            outbox: Vec::new(),
            delayed: Vec::new(),
            publish_seq: 0,
            refresh: Refresh::default(),
            token_expiry,
            server_rooms: HashSet::new(),
            declined: HashSet::new(),
            to_leave: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut streak = Streak::default();
        let mut delay: Option<Duration> = None;
        let (error, halt) = loop {
            if let Some(delay) = delay.take() {
                if let Err(halt) = self.pause(delay).await {
                    break (None, halt);
                }
            }
            let url = self.next_url();
            self.set_state(ConnectionState::Connecting {
                url: url.to_string(),
                attempt: streak.failures + 1,
            });
            let (failure, counts_as_attempt) = match self.establish(&url).await {
                Err(halt) => break (None, halt),
                Ok(Err(failure)) => {
                    streak.failures += 1;
                    (failure, true)
                }
                Ok(Ok((conn, welcome))) => {
                    streak.failures = 0;
                    streak.refusals = 0;
                    let started = Instant::now();
                    let ended = self.serve(conn, welcome, &url).await;
                    self.connection_lost();
                    match ended {
                        Err(halt) => break (None, halt),
                        Ok(failure) => {
                            if started.elapsed() >= STABLE_SESSION {
                                streak.quick_drops = 0;
                            } else {
                                streak.quick_drops = streak.quick_drops.saturating_add(1);
                            }
                            (failure, false)
                        }
                    }
                }
            };
            match self.retry_delay(&failure, &mut streak, counts_as_attempt) {
                Ok(wait) => {
                    tracing::info!(cause = %failure.cause, ?wait, "roomcast connection down, reconnecting");
                    self.set_state(ConnectionState::Reconnecting {
                        attempt: streak.failures + 1,
                        delay: wait,
                        cause: failure.cause,
                    });
                    delay = Some(wait);
                }
                Err(error) => break (Some(error), Halt(None)),
            }
        };
        self.finish(error, halt);
    }

    /// How long to wait before the next attempt, or the error to stop with.
    fn retry_delay(
        &self,
        failure: &Failure,
        streak: &mut Streak,
        counts_as_attempt: bool,
    ) -> Result<Duration, Error> {
        if failure.cause.is_unauthorized() {
            streak.refusals += 1;
            // A fixed token that was refused will be refused again; only a
            // provider can bring a better one, and only so many times.
            if self.config.token_provider.is_none() || streak.refusals >= MAX_REFUSALS {
                return Err(Error::Unauthorized(failure.cause.to_string()));
            }
        }
        if counts_as_attempt && self.config.backoff.exhausted(streak.failures) {
            return Err(Error::GaveUp {
                attempts: streak.failures,
                last: failure.cause.to_string(),
            });
        }
        let exponent = streak.failures.saturating_add(streak.quick_drops);
        Ok(failure
            .retry_after
            .unwrap_or_else(|| self.config.backoff.delay(exponent)))
    }

    fn next_url(&mut self) -> Url {
        let url = self.config.urls[self.next_url % self.config.urls.len()].clone();
        self.next_url = self.next_url.wrapping_add(1);
        url
    }

    /// Waits `delay`, refusing commands meanwhile.
    async fn pause(&mut self, delay: Duration) -> Result<(), Halt> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                cmd = self.commands.recv() => refuse(cmd, Error::Disconnected)?,
            }
        }
    }

    /// One connection attempt: socket, `hello`, `welcome`.
    async fn establish(
        &mut self,
        url: &Url,
    ) -> Result<Result<(Connection, Welcome), Failure>, Halt> {
        let hello_id = self.pending.next_id();
        let resume = self.ticket.as_ref().map(|(session, token)| Resume {
            session: session.clone(),
            token: token.clone(),
            rooms: self
                .rooms
                .joined_rooms()
                .into_iter()
                .filter_map(|(room, presence)| {
                    let pos = self.positions.get(&room)?;
                    Some(ResumeRoom {
                        offset: pos.offset,
                        epoch: pos.epoch.clone(),
                        presence: presence.then_some(true),
                        room,
                    })
                })
                .collect(),
        });
        let attempt = greet(&self.config, url, hello_id, resume);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                result = &mut attempt => return Ok(result),
                cmd = self.commands.recv() => refuse(cmd, Error::Disconnected)?,
            }
        }
    }

    /// Runs one established connection until it ends.
    async fn serve(
        &mut self,
        mut conn: Connection,
        welcome: Welcome,
        url: &Url,
    ) -> Result<Failure, Halt> {
        let info = SessionInfo {
            session: welcome.session.clone(),
            user: welcome.user.clone(),
            node: welcome.node.clone(),
            url: url.to_string(),
            ping_interval: welcome.ping_interval,
        };
        self.ticket = Some((welcome.session.clone(), welcome.resume_token.clone()));
        // Known before anyone hears of the connection: `connect()` returns
        // on the `ready` below, and `token_expires_at()` must answer then.
        self.refresh = Refresh {
            expires_at: welcome.token_expires_at,
            ..Refresh::default()
        };
        self.token_expiry
            .store(welcome.token_expires_at.unwrap_or(0), Ordering::Relaxed);
        tracing::info!(url = %url, node = %info.node, session = %info.session, resumed = welcome.resumed, "roomcast connected");
        self.set_state(ConnectionState::Connected {
            resumed: welcome.resumed,
            session: info.clone(),
        });
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(info));
        }

        let mut watchdog = Watchdog::new(
            welcome.ping_interval,
            self.config.heartbeat_slack,
            Instant::now(),
        );
        conn.set_write_timeout(watchdog.dead_after());
        self.schedule_refresh();
        if let Err(failure) = self.restore_rooms(&mut conn, &welcome).await {
            return Ok(failure);
        }
        // Publishes cut off by the last connection go again, after the
        // re-joins (the node answers a connection's commands in order).
        let mut waiting = std::mem::take(&mut self.outbox);
        waiting.sort_by_key(|job| job.seq);
        let mut waiting = waiting.into_iter();
        while let Some(job) = waiting.next() {
            if let Err(failure) = self.send_publish(&mut conn, job).await {
                self.outbox.extend(waiting);
                return Ok(failure);
            }
        }

        let mut tick = tokio::time::interval(watchdog.check_every());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry_after = None;
        loop {
            tokio::select! {
                incoming = conn.recv() => {
                    watchdog.seen(Instant::now());
                    match incoming {
                        Incoming::Frame(frame) => {
                            if let Some(after) = self.on_frame(frame) {
                                retry_after = Some(after);
                            }
                            for room in std::mem::take(&mut self.to_leave) {
                                let leave = ClientFrame::Leave { id: None, room };
                                if let Err(failure) = self.send_command(&mut conn, leave, Waiter::Releave).await {
                                    return Ok(failure);
                                }
                            }
                        }
                        Incoming::Alive => {}
                        Incoming::Closed { code, reason } => {
                            return Ok(Failure { cause: DisconnectCause::Closed { code, reason }, retry_after });
                        }
                        Incoming::Lost(e) => {
                            return Ok(Failure { cause: DisconnectCause::ConnectionLost(e), retry_after });
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        conn.close().await;
                        return Err(Halt(None));
                    }
                    Some(Command::Close { done }) => {
                        conn.close().await;
                        return Err(Halt(Some(done)));
                    }
                    Some(Command::DropConnection { reconnect_after }) => {
                        drop(conn);
                        return Ok(Failure {
                            cause: DisconnectCause::DroppedForTest,
                            retry_after: Some(reconnect_after),
                        });
                    }
                    Some(Command::Request { frame, reply }) => {
                        if let Err(failure) = self.send_command(&mut conn, frame, Waiter::Caller(reply)).await {
                            return Ok(failure);
                        }
                    }
                    Some(Command::Publish { room, data, key, reply }) => {
                        self.publish_seq += 1;
                        let job = PublishJob { seq: self.publish_seq, room, data, key, attempts: 0, reply };
                        if let Err(failure) = self.send_publish(&mut conn, job).await {
                            return Ok(failure);
                        }
                    }
                    Some(Command::Refresh { reply }) => {
                        if self.config.token_provider.is_none() {
                            let _ = reply.send(Err(Error::Config("refresh_token needs a token provider".into())));
                        } else {
                            self.refresh.waiters.push(reply);
                            if self.refresh.fetching.is_none() && self.refresh.in_flight.is_none() {
                                self.refresh.manual = true;
                                self.start_token_fetch();
                            }
                        }
                    }
                    Some(Command::Raw { frame, done }) => match conn.send(&frame).await {
                        Ok(()) => {
                            let _ = done.send(Ok(()));
                        }
                        Err(SendError::Encode(e)) => {
                            let _ = done.send(Err(Error::Encode(e)));
                        }
                        Err(SendError::Transport(e)) => {
                            let _ = done.send(Err(Error::Disconnected));
                            return Ok(Failure::lost(e));
                        }
                    },
                },
                _ = sleep_until_some(self.delayed.iter().map(|(at, _)| *at).min()) => {
                    let now = tokio::time::Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut self.delayed).into_iter().partition(|(at, _)| *at <= now);
                    self.delayed = later;
                    let mut due = due.into_iter();
                    while let Some((_, job)) = due.next() {
                        if let Err(failure) = self.send_publish(&mut conn, job).await {
                            self.outbox.extend(due.map(|(_, job)| job));
                            return Ok(failure);
                        }
                    }
                }
                _ = sleep_until_some(self.refresh.at), if self.refresh.fetching.is_none() && self.refresh.in_flight.is_none() => {
                    self.refresh.manual = false;
                    self.start_token_fetch();
                }
                token = answer_of(&mut self.refresh.fetching) => {
                    self.refresh.fetching = None;
                    match token {
                        Ok(token) => {
                            let id = self.pending.next_id();
                            match conn.send(&ClientFrame::Refresh { id: Some(id), token }).await {
                                Ok(()) => {
                                    self.pending.insert(id, Pending { waiter: Waiter::Refresh, asked: Asked::Other });
                                    self.refresh.in_flight = Some(id);
                                }
                                Err(SendError::Encode(e)) => self.refresh_failed(Error::Encode(e)),
                                Err(SendError::Transport(e)) => return Ok(Failure::lost(e)),
                            }
                        }
                        Err(e) => self.refresh_failed(Error::TokenProvider(e)),
                    }
                }
                _ = tick.tick() => {
                    match watchdog.check(Instant::now()) {
                        Verdict::Alive => {}
                        Verdict::Probe => {
                            if let Err(SendError::Transport(e)) = conn.send(&ClientFrame::Ping { id: None }).await {
                                return Ok(Failure::lost(e));
                            }
                        }
                        Verdict::Dead => return Ok(Failure::new(DisconnectCause::HeartbeatTimeout)),
                    }
                    self.pending.sweep_abandoned();
                }
            }
        }
    }

    /// After `welcome`: settle the rooms the server resumed, re-join the rest
    /// with `since` so the server replays what it still can.
    async fn restore_rooms(
        &mut self,
        conn: &mut Connection,
        welcome: &Welcome,
    ) -> Result<(), Failure> {
        let mut restored = Vec::new();
        if welcome.resumed {
            for status in &welcome.rooms {
                let since = self.positions.get(&status.room).cloned();
                self.settle_position(
                    &status.room,
                    since.as_ref(),
                    &status.epoch,
                    status.offset,
                    Some(status.recovered),
                    true,
                );
                restored.push(status.room.as_str());
            }
        }
        for (room, presence) in self.rooms.joined_rooms() {
            if restored.contains(&room.as_str()) {
                continue;
            }
            let frame = ClientFrame::Join {
                id: None,
                since: self.positions.get(&room).cloned(),
                presence: presence.then_some(true),
                room,
            };
            self.send_command(conn, frame, Waiter::Rejoin).await?;
        }
        Ok(())
    }

    /// Sends a command with a fresh `id` and records who waits for the reply.
    async fn send_command(
        &mut self,
        conn: &mut Connection,
        frame: ClientFrame,
        waiter: Waiter,
    ) -> Result<(), Failure> {
        let id = self.pending.next_id();
        let frame = with_id(frame, id);
        let asked = match &frame {
            ClientFrame::Join {
                room,
                since,
                presence,
                ..
            } => Asked::Join {
                room: room.clone(),
                presence: presence.unwrap_or(false),
                since: since.clone(),
            },
            ClientFrame::Leave { room, .. } => Asked::Leave { room: room.clone() },
            _ => Asked::Other,
        };
        let pending = Pending { waiter, asked };
        match conn.send(&frame).await {
            Ok(()) => {
                match &pending.asked {
                    Asked::Join { room, presence, .. } => self.rooms.joining(room, *presence),
                    Asked::Leave { room } => self.rooms.leaving(room),
                    Asked::Other => {}
                }
                self.pending.insert(id, pending);
                Ok(())
            }
            Err(SendError::Encode(e)) => {
                pending.resolve(Err(Error::Encode(e)));
                Ok(())
            }
            Err(SendError::Transport(e)) => {
                pending.resolve(Err(Error::Disconnected));
                Err(Failure::lost(e))
            }
        }
    }

    /// Sends (again) a publish under a fresh id and its key. A publish whose
    /// caller stopped waiting is dropped.
    async fn send_publish(
        &mut self,
        conn: &mut Connection,
        mut job: PublishJob,
    ) -> Result<(), Failure> {
        if !job.wanted() {
            return Ok(());
        }
        let id = self.pending.next_id();
        let frame = ClientFrame::Publish {
            id: Some(id),
            room: job.room.clone(),
            data: job.data.clone(),
            key: Some(job.key.clone()),
        };
        job.attempts += 1;
        match conn.send(&frame).await {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        waiter: Waiter::Publish(job),
                        asked: Asked::Other,
                    },
                );
                Ok(())
            }
            Err(SendError::Encode(e)) => {
                job.finish(Err(Error::Encode(e)));
                Ok(())
            }
            Err(SendError::Transport(e)) => {
                // Perhaps sent: the next connection sends it again.
                self.keep_for_next_connection(job);
                Err(Failure::lost(e))
            }
        }
    }

    /// A publish whose connection ended before its answer: into the outbox,
    /// unless it has used up its attempts.
    fn keep_for_next_connection(&mut self, job: PublishJob) {
        if !job.wanted() {
            return;
        }
        if job.attempts >= self.config.publish_attempts {
            job.finish(Err(Error::Disconnected));
        } else {
            self.outbox.push(job);
        }
    }

    fn on_publish_reply(&mut self, job: PublishJob, frame: ServerFrame) {
        if let ServerFrame::Error {
            code: ErrorCode::Unavailable,
            ..
        } = &frame
        {
            if job.attempts < self.config.publish_attempts && job.wanted() {
                // Maybe stored, maybe not: the same key again settles it.
                let wait = PUBLISH_RETRY.delay(job.attempts.saturating_sub(1));
                tracing::debug!(room = %job.room, key = %job.key, ?wait, "publish unavailable, retrying");
                self.delayed.push((tokio::time::Instant::now() + wait, job));
                return;
            }
        }
        let outcome = published(&job.key, frame);
        job.finish(outcome);
    }

    /// Plans the next automatic refresh from the token's expiry (or the
    /// retry after `self.refresh.failures` failures).
    fn schedule_refresh(&mut self) {
        self.refresh.at = None;
        let (Some(expires_at), Some(_)) = (self.refresh.expires_at, &self.config.token_provider)
        else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i128);
        let remaining = Duration::from_millis(
            (i128::from(expires_at) * 1000 - now_ms).clamp(0, i128::from(u32::MAX)) as u64,
        );
        let delay = match self.refresh.failures {
            0 => refresh_delay(remaining, self.config.refresh_margin),
            n => (Duration::from_secs(1) * 2u32.pow((n - 1).min(10)))
                .min(remaining / 3)
                .max(Duration::from_millis(100)),
        };
        self.refresh.at = Some(tokio::time::Instant::now() + delay);
    }

    /// Asks the token provider for a token, without blocking the connection.
    fn start_token_fetch(&mut self) {
        let Some(provider) = self.config.token_provider.clone() else {
            return;
        };
        self.refresh.at = None;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(provider().await);
        });
        self.refresh.fetching = Some(rx);
    }

    /// A `refreshed` arrived.
    fn on_refreshed(&mut self, id: Option<u64>, expires_at: Option<u64>) {
        let matches = id.is_some() && id == self.refresh.in_flight;
        if !matches {
            tracing::debug!(?id, "refreshed for no refresh of ours");
            return;
        }
        if let Some(id) = id {
            self.pending.take(id);
        }
        self.refresh.in_flight = None;
        self.refresh.failures = 0;
        self.refresh.expires_at = expires_at;
        self.token_expiry
            .store(expires_at.unwrap_or(0), Ordering::Relaxed);
        tracing::debug!(?expires_at, "roomcast token refreshed");
        for waiter in self.refresh.waiters.drain(..) {
            let _ = waiter.send(Ok(expires_at));
        }
        self.emit(Event::TokenRefreshed {
            expires_at,
            server: false,
        });
        self.schedule_refresh();
    }

    /// A `refreshed` without `id`: the node extended the token by itself
    /// (its refresh proxy). The client's own next refresh is planned from
    /// the new expiry; one already under way finishes and plans again.
    fn on_server_refreshed(&mut self, expires_at: u64) {
        tracing::debug!(expires_at, "roomcast token extended by the node");
        self.refresh.expires_at = Some(expires_at);
        self.refresh.failures = 0;
        self.token_expiry.store(expires_at, Ordering::Relaxed);
        self.emit(Event::TokenRefreshed {
            expires_at: Some(expires_at),
            server: true,
        });
        self.schedule_refresh();
    }

    /// A `joined` without `id`: the node joined the connection to `room` by
    /// itself (a server-side subscription, right after `welcome`). From now
    /// on it is one of the session's rooms: resumed after a reconnect,
    /// de-duplicated by offset. Such a join replays nothing, so a room the
    /// client was in already (a reconnect whose session was not resumed)
    /// with messages since its position is reported as `RecoveryFailed`.
    fn on_server_joined(&mut self, room: String, offset: u64, epoch: String) {
        self.server_rooms.insert(room.clone());
        self.rooms.server_joined(&room);
        if self.declined.contains(&room) {
            // The application left it: leave it again, muted until then.
            self.rooms.leaving(&room);
            self.to_leave.push(room);
            return;
        }
        let before = self.positions.get(&room).cloned();
        self.positions.advance_to(
            &room,
            Since {
                offset,
                epoch: epoch.clone(),
            },
        );
        self.emit(Event::Joined {
            room: room.clone(),
            offset,
            epoch: epoch.clone(),
            server: true,
        });
        if before.is_some_and(|b| b.epoch != epoch || b.offset < offset) {
            tracing::info!(%room, offset, %epoch, "roomcast: a server-side join skipped messages");
            self.emit(Event::RecoveryFailed {
                room,
                offset,
                epoch,
            });
        }
    }

    /// A refresh failed (the provider, or the node's `error`); the old token
    /// stands.
    fn refresh_failed(&mut self, error: Error) {
        self.refresh.in_flight = None;
        for waiter in self.refresh.waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
        if std::mem::take(&mut self.refresh.manual) {
            // Asked for by the application, which has its answer; the
            // automatic plan goes on as before.
            self.schedule_refresh();
            return;
        }
        self.refresh.failures += 1;
        let attempt = self.refresh.failures;
        let last = attempt >= REFRESH_ATTEMPTS;
        tracing::warn!(error = %error, attempt, last, "roomcast token refresh failed");
        self.emit(Event::TokenRefreshFailed {
            error,
            attempt,
            last,
        });
        if !last {
            self.schedule_refresh();
        }
    }

    /// Routes one server frame; returns the server's requested reconnect
    /// delay when the frame was a `reconnect` notice.
    fn on_frame(&mut self, frame: ServerFrame) -> Option<Duration> {
        match frame {
            ServerFrame::Message {
                room,
                offset,
                epoch,
                data,
                from,
            } => {
                if !self.rooms.delivers(&room) {
                    tracing::debug!(%room, offset, "message for a room being left, dropped");
                } else if self.positions.admit(&room, &epoch, offset).delivers() {
                    self.emit(Event::Message(RoomMessage {
                        room,
                        offset,
                        epoch,
                        data,
                        from,
                    }));
                } else {
                    tracing::debug!(%room, offset, "duplicate message dropped");
                }
            }
            ServerFrame::Direct { data, from } => {
                self.emit(Event::Direct(DirectMessage { data, from }));
            }
            ServerFrame::PresenceJoin { room, member } => {
                self.emit(Event::PresenceJoin { room, member });
            }
            ServerFrame::PresenceLeave { room, member } => {
                self.emit(Event::PresenceLeave { room, member });
            }
            ServerFrame::Reconnect { reason, after_ms } => {
                let after = Duration::from_millis(after_ms);
                self.emit(Event::Reconnect { reason, after });
                return Some(after);
            }
            // The node took the connection out of a room (a refreshed token
            // no longer allows it): forget it, never join it again.
            ServerFrame::Left {
                id: None,
                room,
                reason,
            } => {
                tracing::info!(%room, ?reason, "roomcast: the node took us out of a room");
                self.server_rooms.remove(&room);
                self.rooms.remove(&room);
                self.positions.remove(&room);
                self.emit(Event::Left { room, reason });
            }
            ServerFrame::Joined {
                id: None,
                room,
                offset,
                epoch,
                ..
            } => self.on_server_joined(room, offset, epoch),
            ServerFrame::Refreshed {
                id: None,
                expires_at,
            } => self.on_server_refreshed(expires_at),
            ServerFrame::Refreshed { id, expires_at } => self.on_refreshed(id, Some(expires_at)),
            ServerFrame::Joined { id: Some(id), .. }
            | ServerFrame::Left { id: Some(id), .. }
            | ServerFrame::Presence { id: Some(id), .. }
            | ServerFrame::Pong { id: Some(id) }
            | ServerFrame::RpcResult { id: Some(id), .. }
            | ServerFrame::Ack { id, .. }
            | ServerFrame::Error { id: Some(id), .. } => self.on_reply(id, frame),
            ServerFrame::Error {
                id: None,
                code,
                message,
            } => self.emit(Event::ServerError { code, message }),
            // The answer to the watchdog's probe.
            ServerFrame::Pong { id: None } => {}
            other => self.emit(Event::Unmatched(other)),
        }
        None
    }

    fn on_reply(&mut self, id: u64, frame: ServerFrame) {
        let Some(pending) = self.pending.take(id) else {
            self.emit(Event::Unmatched(frame));
            return;
        };
        let pending = match pending.waiter {
            Waiter::Publish(job) => return self.on_publish_reply(job, frame),
            Waiter::Refresh => {
                if self.refresh.in_flight == Some(id) {
                    let error = match frame {
                        ServerFrame::Error { code, message, .. } => Error::Server { code, message },
                        other => Error::UnexpectedReply(other.kind().to_string()),
                    };
                    self.refresh_failed(error);
                }
                return;
            }
            waiter => Pending {
                waiter,
                asked: pending.asked,
            },
        };
        let automatic = matches!(pending.waiter, Waiter::Rejoin);
        // In a room the node joined the connection to by itself, a join
        // changes nothing: its answer (the room's current position, perhaps
        // ahead of messages still on their way, or an error) leaves the
        // room and its position as they are.
        let via_server =
            matches!(&pending.asked, Asked::Join { room, .. } if self.server_rooms.contains(room));
        match (&pending.asked, &frame) {
            (
                Asked::Join {
                    room,
                    presence,
                    since,
                },
                ServerFrame::Joined {
                    offset,
                    epoch,
                    recovered,
                    ..
                },
            ) => {
                self.rooms.joined(room, *presence);
                if !automatic {
                    self.declined.remove(room);
                }
                if !via_server {
                    self.settle_position(
                        room,
                        since.as_ref(),
                        epoch,
                        *offset,
                        *recovered,
                        automatic,
                    );
                }
            }
            (Asked::Join { .. }, ServerFrame::Error { .. }) if via_server => {}
            (Asked::Join { room, .. }, ServerFrame::Error { code, message, .. }) => {
                if automatic {
                    self.rooms.remove(room);
                    self.positions.remove(room);
                    self.emit(Event::RejoinFailed {
                        room: room.clone(),
                        error: Error::Server {
                            code: *code,
                            message: message.clone(),
                        },
                    });
                } else {
                    self.rooms.join_failed(room);
                }
            }
            (Asked::Leave { room }, ServerFrame::Left { .. })
            | (
                Asked::Leave { room },
                ServerFrame::Error {
                    code: ErrorCode::NotJoined,
                    ..
                },
            ) => {
                // A server-side subscription the application left stays left.
                if self.rooms.is_server(room) {
                    self.declined.insert(room.clone());
                }
                self.server_rooms.remove(room);
                self.rooms.remove(room);
                self.positions.remove(room);
            }
            (Asked::Leave { room }, ServerFrame::Error { .. }) => self.rooms.leave_failed(room),
            _ => {}
        }
        let outcome = match frame {
            ServerFrame::Error { code, message, .. } => Err(Error::Server { code, message }),
            other => Ok(other),
        };
        pending.resolve(outcome);
    }

    /// Where the room's stream continues after a join or a resumed room.
    ///
    /// With a successful replay the position stays at the `since` asked for
    /// (the replayed messages move it on); otherwise nothing before the
    /// room's current offset is coming, so the position jumps there, and when
    /// the client itself asked for the replay the application hears that it
    /// must re-sync.
    fn settle_position(
        &mut self,
        room: &str,
        since: Option<&Since>,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        automatic: bool,
    ) {
        match (since, recovered) {
            (Some(since), Some(true)) => self.positions.replay_from(room, since.clone()),
            _ => self.positions.advance_to(
                room,
                Since {
                    offset,
                    epoch: epoch.to_string(),
                },
            ),
        }
        if automatic && recovered == Some(false) {
            tracing::info!(%room, offset, %epoch, "roomcast could not recover missed messages");
            self.emit(Event::RecoveryFailed {
                room: room.to_string(),
                offset,
                epoch: epoch.to_string(),
            });
        }
    }

    /// The connection is gone: what was in flight fails, unsettled rooms are
    /// forgotten.
    fn connection_lost(&mut self) {
        for pending in self.pending.drain() {
            match pending.waiter {
                Waiter::Publish(job) => self.keep_for_next_connection(job),
                waiter => Pending {
                    waiter,
                    asked: pending.asked,
                }
                .resolve(Err(Error::Disconnected)),
            }
        }
        // Publishes waiting out a retry go with the first sends of the next
        // connection.
        for (_, job) in std::mem::take(&mut self.delayed) {
            self.outbox.push(job);
        }
        for waiter in std::mem::take(&mut self.refresh).waiters {
            let _ = waiter.send(Err(Error::Disconnected));
        }
        self.token_expiry.store(0, Ordering::Relaxed);
        self.server_rooms.clear();
        self.to_leave.clear();
        for room in self.rooms.forget_unsettled() {
            self.positions.remove(&room);
        }
    }

    fn finish(mut self, error: Option<Error>, halt: Halt) {
        for pending in self.pending.drain() {
            pending.resolve(Err(Error::Closed));
        }
        let waiting = std::mem::take(&mut self.outbox).into_iter().chain(
            std::mem::take(&mut self.delayed)
                .into_iter()
                .map(|(_, job)| job),
        );
        for job in waiting {
            job.finish(Err(Error::Closed));
        }
        for waiter in std::mem::take(&mut self.refresh).waiters {
            let _ = waiter.send(Err(Error::Closed));
        }
        self.token_expiry.store(0, Ordering::Relaxed);
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = refuse(Some(cmd), Error::Closed);
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error.clone().unwrap_or(Error::Closed)));
        }
        if let Some(e) = &error {
            tracing::warn!(error = %e, "roomcast client stopped");
        }
        self.set_state(ConnectionState::Disconnected { error });
        if let Some(done) = halt.0 {
            let _ = done.send(());
        }
    }

    fn set_state(&mut self, state: ConnectionState) {
        self.state.send_replace(state.clone());
        self.emit(Event::State(state));
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the application dropped its `Events`.
        let _ = self.events.send(event);
    }
}

/// Answers a command that cannot be carried out now; `Err` when it asks the
/// task to stop.
fn refuse(cmd: Option<Command>, error: Error) -> Result<(), Halt> {
    match cmd {
        None => Err(Halt(None)),
        Some(Command::Close { done }) => Err(Halt(Some(done))),
        Some(Command::Request { reply, .. }) => {
            let _ = reply.send(Err(error));
            Ok(())
        }
        Some(Command::Raw { done, .. }) => {
            let _ = done.send(Err(error));
            Ok(())
        }
        Some(Command::Publish { reply, .. }) => {
            let _ = reply.send(Err(error));
            Ok(())
        }
        Some(Command::Refresh { reply }) => {
            let _ = reply.send(Err(error));
            Ok(())
        }
        Some(Command::DropConnection { .. }) => Ok(()),
    }
}

/// Opens a connection and exchanges `hello` for `welcome`, all within the
/// connect timeout.
async fn greet(
    config: &Config,
    url: &Url,
    hello_id: u64,
    resume: Option<Resume>,
) -> Result<(Connection, Welcome), Failure> {
    let attempt = async {
        let token = config
            .token()
            .await
            .map_err(|e| Failure::connect(format!("token provider failed: {e}")))?;
        let mut conn = Connection::open(url, config.codec, config.compression)
            .await
            .map_err(Failure::connect)?;
        conn.set_write_timeout(config.connect_timeout);
        let hello = ClientFrame::Hello {
            id: Some(hello_id),
            token,
            resume,
        };
        conn.send(&hello).await.map_err(|e| match e {
            SendError::Encode(e) | SendError::Transport(e) => Failure::connect(e),
        })?;
        let mut retry_after = None;
        loop {
            match conn.recv().await {
                Incoming::Frame(ServerFrame::Welcome {
                    session,
                    resume_token,
                    user,
                    node,
                    ping_interval_ms,
                    resumed,
                    rooms,
                    token_expires_at,
                    ..
                }) => {
                    let welcome = Welcome {
                        session,
                        resume_token,
                        user,
                        node,
                        ping_interval: Duration::from_millis(ping_interval_ms),
                        resumed,
                        rooms,
                        token_expires_at,
                    };
                    return Ok((conn, welcome));
                }
                Incoming::Frame(ServerFrame::Error {
                    code: ErrorCode::Unauthorized,
                    message,
                    ..
                }) => return Err(Failure::new(DisconnectCause::Unauthorized(message))),
                Incoming::Frame(ServerFrame::Error { code, message, .. }) => {
                    return Err(Failure::connect(format!(
                        "hello refused: {code}: {message}"
                    )))
                }
                Incoming::Frame(ServerFrame::Reconnect { after_ms, .. }) => {
                    retry_after = Some(Duration::from_millis(after_ms));
                }
                Incoming::Frame(other) => {
                    tracing::debug!(kind = other.kind(), "frame before welcome ignored");
                }
                Incoming::Alive => {}
                Incoming::Closed { code, reason } => {
                    return Err(Failure {
                        cause: DisconnectCause::Closed { code, reason },
                        retry_after,
                    })
                }
                Incoming::Lost(e) => {
                    return Err(Failure::connect(format!(
                        "connection ended before welcome: {e}"
                    )))
                }
            }
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Failure::connect(format!(
            "no welcome within {:?}",
            config.connect_timeout
        ))),
    }
}

/// When to refresh a token that expires `remaining` from now: at 80 % of
/// the remaining lifetime, and at least `margin` (at most half the lifetime)
/// before expiry.
pub(crate) fn refresh_delay(remaining: Duration, margin: Duration) -> Duration {
    let margin = margin.min(remaining / 2);
    remaining.mul_f64(0.8).min(remaining - margin)
}

/// Sleeps until `at`; never wakes without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The answer on `rx`; never ready without a receiver. A provider task that
/// died counts as a failed provider.
async fn answer_of(
    rx: &mut Option<oneshot::Receiver<Result<String, String>>>,
) -> Result<String, String> {
    match rx {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err("the token provider task ended".into())),
        None => std::future::pending().await,
    }
}

/// The same command with `id` set.
fn with_id(mut frame: ClientFrame, new_id: u64) -> ClientFrame {
    frame.set_id(Some(new_id));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_at_80_percent_and_at_least_the_margin_before_expiry() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(refresh_delay(s(100), s(5)), s(80));
        assert_eq!(refresh_delay(s(3600), s(5)), s(2880));
        assert_eq!(refresh_delay(s(20), s(5)), s(15));
        assert_eq!(refresh_delay(s(4), s(5)), s(2));
        assert_eq!(refresh_delay(ms(0), s(5)), ms(0));
    }
}

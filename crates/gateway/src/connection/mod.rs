//! One WebSocket connection, from upgrade to close, in one task.
//!
//! The task owns the socket. It waits for `hello` ([`handshake`]), then
//! loops over three sources: frames from the client (decoded and
//! rate-limited as they arrive), the command running (one at a time, in
//! arrival order, by [`commands`]; the frames read meanwhile wait their
//! turn), and the connection's outbox (everything queued for it, written as
//! one batch with one flush). A close asked for by anyone
//! (heartbeat, slow consumer, drain, API) arrives through the outbox too, and
//! can interrupt a write that a stalled peer never lets finish.

mod commands;
pub mod echo;
mod handshake;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use roomcast_protocol::{close, ClientFrame, Codec, ErrorCode, ServerFrame};
use tracing::Instrument;
use yawc::close::CloseCode;
use yawc::{Frame, HttpStream, OpCode, WebSocket};

use crate::conn_handle::ConnHandle;
use crate::limits::RateLimiter;
use crate::node::Node;
use crate::outbox::Outgoing;

pub type Socket = WebSocket<HttpStream>;

/// What the upgrade handler learned about the connection.
pub struct Upgrade {
    pub codec: Codec,
    pub remote: SocketAddr,
    /// The socket's descriptor, for direct pings (see [`crate::direct_write`]).
    pub fd: Option<crate::direct_write::Fd>,
    /// Token from `Authorization: Bearer` on the upgrade request.
    pub bearer: Option<String>,
    /// The upgrade's headers named in `proxy.forward_headers`.
    pub headers: Vec<(String, String)>,
    /// Refuse right after the upgrade with this close (over capacity).
    pub refuse: Option<(u16, &'static str)>,
    /// Counts the socket as open until the connection ends.
    pub open: Option<crate::limits::OpenSocket>,
}

/// Runs one connection to its end.
///
/// The socket and the upgrade come boxed: this future is the connection's
/// task for its whole life, and values moved into an async fn keep their
/// space in it even after they are moved on, so an inline 624-byte socket
/// would be paid for twice by every idle connection.
pub async fn serve(node: Arc<Node>, mut ws: Box<Socket>, mut upgrade: Box<Upgrade>) {
    let _held = upgrade.open.take();
    if let Some((code, reason)) = upgrade.refuse {
        node.metrics.disconnect(code);
        Box::pin(close_socket(&mut ws, code, reason)).await;
        return;
    }
    let hello_span = if crate::telemetry::enabled() {
        tracing::info_span!("hello", node = %node.id, remote = %upgrade.remote)
    } else {
        tracing::Span::none()
    };
    // The handshake, the command handler and the close path are boxed:
    // they run briefly, and inline they would make every idle
    // connection's task as large as the largest of them.
    let established = match Box::pin(handshake::run(&node, &mut ws, &upgrade))
        .instrument(hello_span)
        .await
    {
        Ok(established) => established,
        Err(handshake::Refused::Close((code, reason))) => {
            node.metrics.disconnect(code);
            Box::pin(close_socket(&mut ws, code, &reason)).await;
            return;
        }
        Err(handshake::Refused::Ended(ended)) => {
            let code = Box::pin(finish(ws, ended)).await;
            node.metrics.disconnect(code);
            return;
        }
    };
    let handshake::Established {
        conn,
        rooms,
        granted,
        subs,
    } = established;
    tracing::debug!(session = %conn.session, user = %conn.user(), remote = %upgrade.remote, "connected");
    drop(upgrade);
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    let slot = node.registry.insert(conn.clone());

    let generation = node.live.generation();
    let live = node.live.get_full();
    let limits = &live.config.limits;
    let mut gate = Admission {
        rate: RateLimiter::new(limits.messages_per_second, limits.message_burst),
        bad_frames: 0,
        live,
        generation,
    };
    let state = commands::State {
        rooms,
        granted,
        subs,
    };
    let wire_off = WireOff(&conn.wire);
    let (end, mut state) = run_loop(&node, &conn, &mut ws, &mut gate, state).await;
    let code = end_socket(&conn, ws, end).await;
    drop(wire_off);

    Box::pin(node.lifecycle().close(&conn)).await;
    Box::pin(node.closed(&conn, std::mem::take(&mut state.rooms))).await;
    // Last: the drain waits for the registry to empty, then flushes the
    // presence ops queued above.
    node.registry.remove(slot);
    node.metrics.connections.dec();
    node.metrics.disconnect(code);
    tracing::debug!(session = %conn.session, code, "disconnected");
}

/// Stops direct pings if the connection's task ends in a panic: unwinding
/// drops this before the socket.
struct WireOff<'a>(&'a crate::direct_write::Wire);

impl Drop for WireOff<'_> {
    fn drop(&mut self) {
        self.0.force_off();
    }
}

/// Frames read ahead while a command runs, each waiting its turn. Past
/// this the node stops reading the connection until the command ends (the
/// client's frames wait in the socket buffers).
const READ_AHEAD: usize = 16;

/// How a frame is admitted as it arrives: the rate limit and the count of
/// malformed frames apply to arrival times, not to when the frame's turn
/// comes.
struct Admission {
    rate: RateLimiter,
    /// Undecodable frames in a row.
    bad_frames: u32,
    /// The configuration in force, for its limits.
    live: Arc<crate::live_config::Live>,
    /// The live configuration's generation `live` came from.
    generation: u64,
}

/// A frame read, waiting for the command before it to end.
enum Turn {
    Command(ClientFrame),
    /// The answer to a frame refused on arrival (malformed, over the rate),
    /// and the close it brings when it was one too many.
    Refused(ServerFrame, Option<(u16, &'static str)>),
}

/// The command running, which owns the connection's state until it ends.
type Running<'a> = Pin<Box<dyn Future<Output = commands::State> + Send + 'a>>;

/// The main loop; returns the connection's state and how it ended: the
/// code of the close the node sent (0 when the socket just went away), or
/// what the peer did, which [`finish`] answers.
///
/// Commands run one at a time, in the order their frames arrived, and
/// their replies go out in that order. While one runs (a round trip to
/// Redis, a proxy call that may take seconds) the loop goes on writing
/// the outbox (room messages keep flowing) and reading frames: pongs keep
/// the heartbeat satisfied, and up to [`READ_AHEAD`] frames wait their
/// turn. A running command is never abandoned half way (a join or a
/// publish runs to its end, whatever closes the connection meanwhile).
async fn run_loop(
    node: &Arc<Node>,
    conn: &Arc<ConnHandle>,
    ws: &mut Socket,
    gate: &mut Admission,
    state: commands::State,
) -> (Result<u16, Ended>, commands::State) {
    // What is awaited only now and then (a write, a close) is boxed, so
    // the state an idle connection keeps is just the waits below.
    conn.wire.enable();
    let mut idle = Some(state);
    let mut running: Option<Running<'_>> = None;
    let mut waiting: VecDeque<Turn> = VecDeque::new();
    loop {
        while running.is_none() {
            let Some(turn) = waiting.pop_front() else {
                if waiting.capacity() > 0 {
                    // Not kept by a connection that goes idle again.
                    waiting = VecDeque::new();
                }
                break;
            };
            running = take_turn(node, conn, &mut idle, turn);
        }
        tokio::select! {
            biased;
            next = conn.outbox.next() => {
                let batch = match next {
                    Ok(batch) => batch,
                    Err(close) => {
                        Box::pin(conn.wire.disable()).await;
                        let state = Box::pin(settle(running, idle)).await;
                        Box::pin(close_socket(ws, close.code, close.reason)).await;
                        return (Ok(close.code), state);
                    }
                };
                match Box::pin(write_or_interrupt(ws, conn, batch)).await {
                    Written::Done => {}
                    Written::Failed => return (Ok(0), Box::pin(settle(running, idle)).await),
                    Written::Interrupted(close) => {
                        Box::pin(conn.wire.disable()).await;
                        let state = Box::pin(settle(running, idle)).await;
                        let patience = if close.code == close::SLOW_CONSUMER {
                            SLOW_CLOSE_PATIENCE
                        } else {
                            CLOSE_PATIENCE
                        };
                        Box::pin(close_socket_within(ws, close.code, close.reason, patience)).await;
                        return (Ok(close.code), state);
                    }
                }
            }
            state = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                running = None;
                idle = Some(state);
            }
            incoming = ws.next_frame(), if waiting.len() < READ_AHEAD => {
                let frame = match incoming {
                    Ok(frame) => frame,
                    Err(e) => {
                        Box::pin(conn.wire.disable()).await;
                        // The frames read before the failure are handled, as
                        // they would have been had they arrived slower.
                        let state = Box::pin(settle_all(node, conn, running, idle, waiting)).await;
                        return (Err(Ended::Failed(e)), state);
                    }
                };
                conn.touch();
                match frame.opcode() {
                    OpCode::Text | OpCode::Binary => {
                        let turn = admit(node, conn, gate, frame.payload());
                        if running.is_none() && waiting.is_empty() {
                            // Nothing before it: its turn is now (the queue
                            // stays unallocated).
                            running = take_turn(node, conn, &mut idle, turn);
                        } else {
                            waiting.push_back(turn);
                        }
                    }
                    OpCode::Ping => {
                        // yawc now owes the peer a pong, which it writes
                        // from inside a later read: the ticker must stay
                        // off this socket from here on.
                        Box::pin(conn.wire.disable()).await;
                    }
                    OpCode::Close => {
                        Box::pin(conn.wire.disable()).await;
                        let state = Box::pin(settle_all(node, conn, running, idle, waiting)).await;
                        return (Err(Ended::PeerClosed(frame)), state);
                    }
                    OpCode::Pong if frame.payload().len() > MAX_CONTROL_PAYLOAD => {
                        Box::pin(conn.wire.disable()).await;
                        let state = Box::pin(settle_all(node, conn, running, idle, waiting)).await;
                        return (Err(Ended::Broken(LONG_PONG)), state);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Waits for the running command, if any, and gives the state back.
async fn settle(running: Option<Running<'_>>, idle: Option<commands::State>) -> commands::State {
    match running {
        Some(command) => command.await,
        None => idle.expect("no command is running"),
    }
}

/// The client stopped sending: the running command ends, then the frames
/// read before the end are handled in turn.
async fn settle_all(
    node: &Arc<Node>,
    conn: &Arc<ConnHandle>,
    running: Option<Running<'_>>,
    idle: Option<commands::State>,
    waiting: VecDeque<Turn>,
) -> commands::State {
    let mut idle = Some(settle(running, idle).await);
    for turn in waiting {
        if let Some(command) = take_turn(node, conn, &mut idle, turn) {
            idle = Some(command.await);
        }
    }
    idle.expect("no command is running")
}

/// A frame's turn: starts its command, which takes the state until it
/// ends, or sends the answer it was refused with.
fn take_turn<'a>(
    node: &'a Arc<Node>,
    conn: &'a Arc<ConnHandle>,
    idle: &mut Option<commands::State>,
    turn: Turn,
) -> Option<Running<'a>> {
    match turn {
        Turn::Command(frame) => {
            let state = idle.take().expect("no command is running");
            Some(run_command(node, conn, state, frame))
        }
        Turn::Refused(reply, close) => {
            refuse(conn, &reply, close);
            None
        }
    }
}

/// Sends a refused frame's answer, then the close it brings, if any (the
/// answer explains the close, so it goes first).
fn refuse(conn: &ConnHandle, reply: &ServerFrame, close: Option<(u16, &'static str)>) {
    let _ = conn.send(reply);
    if let Some((code, reason)) = close {
        conn.outbox.close(code, reason);
    }
}

/// Applies the rate limit and the malformed-frame count to a frame as it
/// arrives, and decodes it.
fn admit(node: &Arc<Node>, conn: &Arc<ConnHandle>, gate: &mut Admission, payload: &Bytes) -> Turn {
    let generation = node.live.generation();
    if generation != gate.generation {
        // The configuration was reloaded: new limits from this frame on.
        gate.generation = generation;
        gate.live = node.live.get_full();
        let limits = &gate.live.config.limits;
        gate.rate
            .reconfigure(limits.messages_per_second, limits.message_burst);
    }
    let limits = &gate.live.config.limits;
    let decoded = conn.codec.decode::<ClientFrame>(payload);
    if !gate.rate.allow(Instant::now()) {
        node.metrics.rate_limited.inc();
        let id = match &decoded {
            Ok(f) => f.id(),
            Err(e) => e.id,
        };
        let close = (gate.rate.strikes >= limits.rate_limit_strikes)
            .then_some((close::RATE_LIMITED, "rate limit exceeded repeatedly"));
        return Turn::Refused(
            ServerFrame::error(
                id,
                ErrorCode::RateLimited,
                format!(
                    "over {} frames per second; frame dropped",
                    limits.messages_per_second
                ),
            ),
            close,
        );
    }
    match decoded {
        Err(e) => {
            node.metrics.frame_in(None);
            gate.bad_frames += 1;
            let close = (gate.bad_frames > limits.max_bad_frames)
                .then_some((close::PROTOCOL_VIOLATION, "too many malformed frames"));
            Turn::Refused(
                ServerFrame::error(e.id, ErrorCode::BadRequest, e.message),
                close,
            )
        }
        Ok(frame) => {
            node.metrics.frame_in(Some(&frame));
            gate.bad_frames = 0;
            Turn::Command(frame)
        }
    }
}

/// Runs one command with the connection's state and queues its reply.
fn run_command<'a>(
    node: &'a Arc<Node>,
    conn: &'a Arc<ConnHandle>,
    mut state: commands::State,
    frame: ClientFrame,
) -> Running<'a> {
    Box::pin(async move {
        let id = frame.id();
        let span = if crate::telemetry::enabled() {
            tracing::info_span!("command", kind = frame.kind(), session = %conn.session)
        } else {
            tracing::Span::none()
        };
        let reply = commands::handle(node, conn, &mut state, frame)
            .instrument(span)
            .await;
        let reply = reply.unwrap_or_else(|e| Some(ServerFrame::error(id, e.code, e.message)));
        if let Some(reply) = reply {
            node.metrics.frame_out(&reply);
            let _ = conn.send(&reply);
        }
        state
    })
}

/// How long a closing connection may take to accept its last frames.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);
/// How long a slow consumer has to read up to its 4508 close frame before
/// the socket is dropped (its backlog was discarded; only the frames already
/// in the socket buffer stand before the close).
const SLOW_CLOSE_PATIENCE: Duration = Duration::from_secs(10);

enum Written {
    Done,
    Failed,
    Interrupted(crate::outbox::CloseRequest),
}

/// Writes a batch, unless a close is asked for meanwhile: then a slow
/// consumer's batch is abandoned at once (between frames, so the stream stays
/// well-formed), and any other close lets the batch finish within
/// [`CLOSE_PATIENCE`] (it may hold the frame that explains the close).
async fn write_or_interrupt(
    ws: &mut Socket,
    conn: &ConnHandle,
    batch: VecDeque<Outgoing>,
) -> Written {
    if conn.wire.claim().await.is_err() {
        return Written::Failed;
    }
    let write = async {
        write_batch(ws, conn.codec, batch.into_iter()).await?;
        conn.wire.release();
        Ok::<(), yawc::WebSocketError>(())
    };
    tokio::pin!(write);
    tokio::select! {
        biased;
        result = &mut write => match result {
            Ok(()) => Written::Done,
            Err(_) => Written::Failed,
        },
        close = conn.outbox.closing() => {
            if close.code == close::SLOW_CONSUMER {
                return Written::Interrupted(close);
            }
            match tokio::time::timeout(CLOSE_PATIENCE, &mut write).await {
                Ok(Ok(())) => Written::Done,
                _ => Written::Interrupted(close),
            }
        }
    }
}

fn to_ws_frame(codec: Codec, bytes: Bytes) -> Frame {
    if codec.is_binary() {
        Frame::binary(bytes)
    } else {
        Frame::text(bytes)
    }
}

async fn write_batch(
    ws: &mut Socket,
    codec: Codec,
    batch: impl Iterator<Item = Outgoing>,
) -> Result<(), yawc::WebSocketError> {
    for item in batch {
        let frame = match item {
            Outgoing::Frame(bytes) => to_ws_frame(codec, bytes),
            Outgoing::Message { bytes, binary } => {
                if binary {
                    Frame::binary(bytes)
                } else {
                    Frame::text(bytes)
                }
            }
            Outgoing::Ping => Frame::ping(Bytes::new()),
            // The claim before this batch finished the frame.
            Outgoing::FinishDirect => continue,
        };
        ws.feed(frame).await?;
    }
    ws.flush().await
}

/// How the peer ended a connection; [`finish`] answers it.
pub enum Ended {
    /// The peer sent this close frame.
    PeerClosed(Frame),
    /// A read failed: the peer broke the protocol or a limit, or went away.
    Failed(yawc::WebSocketError),
    /// A frame yawc let through broke the protocol: failed with 1002 and
    /// this reason.
    Broken(&'static str),
}

/// A pong is a control frame, at most 125 bytes long (RFC 6455 §5.5); yawc
/// checks the length of pings only.
const LONG_PONG: &str = "pong frame longer than 125 bytes";

/// Answers the way the peer ended the connection, and lets the socket go
/// (the node closes the TCP connection first, as RFC 6455 §7.1.1 asks of
/// a server). Returns the close code the connection ended with: the
/// peer's (1005 when its close frame carried none), the node's for a
/// broken frame, or 0 when the socket just went away.
/// Ends a connection's socket once its loop returned: direct writes stop
/// first (no direct ping may reach the descriptor once the socket is
/// closed: it could belong to another connection by then), then the close
/// handshake `end` calls for. Returns the close code.
async fn end_socket(conn: &ConnHandle, ws: Box<Socket>, end: Result<u16, Ended>) -> u16 {
    Box::pin(conn.wire.disable()).await;
    match end {
        Ok(code) => {
            drop(ws);
            code
        }
        Err(ended) => Box::pin(finish(ws, ended)).await,
    }
}

async fn finish(ws: Box<Socket>, ended: Ended) -> u16 {
    match ended {
        Ended::PeerClosed(frame) => finish_peer_close(ws, &frame).await,
        Ended::Failed(error) => close_for_error(ws, error).await,
        Ended::Broken(reason) => close_bypassing_yawc(ws, close::PROTOCOL_ERROR, reason).await,
    }
}

/// The peer sent a close frame. yawc checked its code and the UTF-8 of its
/// reason (a bad one is a read error, closed by [`close_for_error`]) and
/// queued the answer RFC 6455 §5.5.1 asks for, a close frame with the same
/// code; it is written here, before the socket goes (yawc writes it only
/// when the socket is used again).
async fn finish_peer_close(mut ws: Box<Socket>, frame: &Frame) -> u16 {
    if frame.payload().len() > MAX_CONTROL_PAYLOAD {
        // A control frame longer than 125 bytes (§5.5), which yawc checks
        // for pings only: the connection is failed with 1002 instead of
        // the answer yawc queued (which would say all was well).
        let reason = "close frame longer than 125 bytes";
        return close_bypassing_yawc(ws, close::PROTOCOL_ERROR, reason).await;
    }
    // The read side is closed: this read writes what yawc owes the peer,
    // then ends.
    let _ = tokio::time::timeout(CLOSE_PATIENCE, ws.next_frame()).await;
    // 1005: the peer's close frame carried no code.
    frame.close_code().map(u16::from).unwrap_or(1005)
}

/// The longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The close RFC 6455 and our contract give for a read error; `None` when
/// the peer just went away.
fn error_close(error: &yawc::WebSocketError) -> Option<(u16, &'static str)> {
    use yawc::WebSocketError as E;
    Some(match error {
        E::ConnectionClosed => return None,
        E::FrameTooLarge => (
            close::TOO_LARGE,
            "message larger than limits.max_message_bytes",
        ),
        E::InvalidUTF8 => (close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
        E::ReservedBitsNotZero
        | E::ControlFrameFragmented
        | E::PingFrameTooLarge
        | E::InvalidFragment
        | E::InvalidCloseFrame
        | E::InvalidCloseCode
        | E::FragmentTimeout
        | E::InvalidContinuationFrame
        | E::InvalidOpCode(_)
        | E::CompressionNotSupported => (close::PROTOCOL_ERROR, "WebSocket protocol error"),
        _ => (close::PROTOCOL_ERROR, "WebSocket protocol error"),
    })
}

/// A read failed: the peer broke the protocol or a limit, or went away.
/// Closes with the code RFC 6455 and our contract give for it and returns
/// it (0 when the peer went away).
///
/// yawc answers a frame it finds broken with a close of its own, queued
/// when it meets it: its error text for a reason, and for an unknown
/// opcode code 1003, where RFC 6455 §5.2 asks to fail the connection
/// (1002, which Autobahn's cases 4.* expect). Sent the usual way, ours
/// would follow it: two close frames. So the socket is taken apart
/// instead: what yawc queued is dropped, and one close frame, ours, goes
/// straight through the frame codec. Then the node shuts its side and
/// reads what the peer still sends (its own close, at most for a second),
/// so that the socket is not dropped with unread bytes, which would reset
/// the connection and could destroy the close frame on its way.
async fn close_for_error(ws: Box<Socket>, error: yawc::WebSocketError) -> u16 {
    match error_close(&error) {
        Some((code, reason)) => close_bypassing_yawc(ws, code, reason).await,
        None => 0,
    }
}

/// Fails the connection with `code`, dropping whatever yawc has queued
/// (see [`close_for_error`]); returns `code`.
async fn close_bypassing_yawc(ws: Box<Socket>, code: u16, reason: &str) -> u16 {
    use tokio::io::AsyncReadExt;
    // SAFETY: `split_stream` is unsafe only in that its parts bypass the
    // protocol's bookkeeping: the caller must keep to one reader and one
    // writer and write valid frames. Here the two halves are dropped
    // unused, one close frame is written, and the rest is only read and
    // thrown away.
    let (mut framed, _read, _write) = unsafe { (*ws).split_stream() };
    let sent = tokio::time::timeout(CLOSE_PATIENCE, async {
        framed
            .send(Frame::close(CloseCode::from(code), reason))
            .await?;
        framed.close().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut scratch = [0u8; 4096];
            while matches!(framed.get_mut().read(&mut scratch).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    code
}

/// Sends one frame straight to the socket (before the outbox exists).
pub(crate) async fn send_now(ws: &mut Socket, codec: Codec, frame: &ServerFrame) {
    if let Ok(bytes) = codec.encode(frame) {
        let _ = ws.send(to_ws_frame(codec, bytes)).await;
    }
}

/// Sends a close frame and waits briefly for the peer's answer.
pub(crate) async fn close_socket(ws: &mut Socket, code: u16, reason: &str) {
    close_socket_within(ws, code, reason, CLOSE_PATIENCE).await
}

async fn close_socket_within(ws: &mut Socket, code: u16, reason: &str, patience: Duration) {
    let sent = tokio::time::timeout(
        patience,
        ws.send(Frame::close(CloseCode::from(code), reason)),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(frame) = ws.next().await {
            if frame.opcode() == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

//! The echo endpoint (`websocket.echo_path`, off by default): every text
//! and binary message a client sends comes back to it unchanged, text as
//! text and binary as binary. It exists so that a conformance suite
//! (Autobahn|Testsuite, `make autobahn`) tests the node's own WebSocket
//! code rather than a stand-in: the connection arrives through the same
//! upgrade handler as `/ws` (draining, origin, capacity checks), with the
//! same yawc options (buffers, size limit, deflate, UTF-8 checks), and its
//! answers go out the way `/ws` sends anything: through the connection's
//! outbox and its batched writes, or written straight to the socket when
//! short enough and nothing is queued (the hub's direct writes). Reads are
//! rate-limited like `/ws` frames; read errors and close frames take the
//! same path to their close codes. Only the protocol is left out: there is
//! no `hello`, no session, no command, no room.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use roomcast_protocol::close;
use yawc::{Frame, OpCode};

use super::{
    close_socket, close_socket_within, end_socket, write_or_interrupt, Ended, Socket, Upgrade,
    WireOff, Written, CLOSE_PATIENCE, LONG_PONG, MAX_CONTROL_PAYLOAD, SLOW_CLOSE_PATIENCE,
};
use crate::auth::Identity;
use crate::config::LimitsConfig;
use crate::conn_handle::ConnHandle;
use crate::direct_write::Direct;
use crate::limits::RateLimiter;
use crate::node::Node;
use crate::outbox::{Claim, Outbox, PushError};

/// Runs one echo connection to its end.
pub async fn serve(node: Arc<Node>, mut ws: Box<Socket>, mut upgrade: Box<Upgrade>) {
    let _held = upgrade.open.take();
    if let Some((code, reason)) = upgrade.refuse {
        node.metrics.disconnect(code);
        Box::pin(close_socket(&mut ws, code, reason)).await;
        return;
    }
    let limits = node.live.get().config.limits.clone();
    let id = node.next_conn_id();
    let conn = Arc::new(
        ConnHandle::new(
            id,
            Arc::from(format!("echo-{id}")),
            Identity::anonymous_user("echo"),
            upgrade.codec,
            Outbox::new(limits.outbound_queue_frames, limits.outbound_queue_bytes),
        )
        .with_socket(upgrade.fd, node.config.heartbeat.direct_ping),
    );
    tracing::debug!(remote = %upgrade.remote, conn = id, "echo connection");
    drop(upgrade);
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    // Registered like any connection: the heartbeat pings it and a drain
    // closes it.
    let slot = node.registry.insert(conn.clone());
    let wire_off = WireOff(&conn.wire);
    let end = run_loop(&node, &conn, &mut ws, &limits).await;
    let code = end_socket(&conn, ws, end).await;
    drop(wire_off);
    node.registry.remove(slot);
    node.metrics.connections.dec();
    node.metrics.disconnect(code);
    tracing::debug!(conn = id, code, "echo connection ended");
}

/// The loop of [`super::run_loop`] with echo for commands: writes what the
/// outbox holds, reads frames and sends each message back. Returns how
/// the connection ended, as `super::run_loop` does.
async fn run_loop(
    node: &Arc<Node>,
    conn: &Arc<ConnHandle>,
    ws: &mut Socket,
    limits: &LimitsConfig,
) -> Result<u16, Ended> {
    conn.wire.enable();
    let mut rate = RateLimiter::new(limits.messages_per_second, limits.message_burst);
    let direct_below = node.hub.direct_below();
    loop {
        tokio::select! {
            biased;
            next = conn.outbox.next() => {
                let batch = match next {
                    Ok(batch) => batch,
                    Err(close) => {
                        Box::pin(conn.wire.disable()).await;
                        Box::pin(close_socket(ws, close.code, close.reason)).await;
                        return Ok(close.code);
                    }
                };
                match Box::pin(write_or_interrupt(ws, conn, batch)).await {
                    Written::Done => {}
                    Written::Failed => return Ok(0),
                    Written::Interrupted(close) => {
                        Box::pin(conn.wire.disable()).await;
                        let patience = if close.code == close::SLOW_CONSUMER {
                            SLOW_CLOSE_PATIENCE
                        } else {
                            CLOSE_PATIENCE
                        };
                        Box::pin(close_socket_within(ws, close.code, close.reason, patience)).await;
                        return Ok(close.code);
                    }
                }
            }
            incoming = ws.next_frame() => {
                let frame = match incoming {
                    Ok(frame) => frame,
                    Err(e) => {
                        Box::pin(conn.wire.disable()).await;
                        return Err(Ended::Failed(e));
                    }
                };
                conn.touch();
                match frame.opcode() {
                    OpCode::Text | OpCode::Binary => {
                        if !rate.allow(Instant::now()) {
                            node.metrics.rate_limited.inc();
                            if rate.strikes >= limits.rate_limit_strikes {
                                conn.outbox
                                    .close(close::RATE_LIMITED, "rate limit exceeded repeatedly");
                            }
                            continue;
                        }
                        echo(conn, frame, direct_below);
                    }
                    OpCode::Ping => {
                        // yawc owes the peer a pong now (see `super::run_loop`).
                        Box::pin(conn.wire.disable()).await;
                    }
                    OpCode::Close => {
                        Box::pin(conn.wire.disable()).await;
                        return Err(Ended::PeerClosed(frame));
                    }
                    OpCode::Pong if frame.payload().len() > MAX_CONTROL_PAYLOAD => {
                        Box::pin(conn.wire.disable()).await;
                        return Err(Ended::Broken(LONG_PONG));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Sends a message back as it came: straight to the socket when it is
/// short enough and nothing is queued before it (as the hub delivers room
/// messages), else through the outbox. An outbox overflow closes the
/// connection with 4508 by itself.
fn echo(conn: &ConnHandle, frame: Frame, direct_below: usize) {
    let binary = frame.opcode() == OpCode::Binary;
    let bytes = frame.into_payload();
    let _: Result<(), PushError> = if bytes.len() < direct_below {
        send_direct_or_queue(conn, bytes, binary)
    } else {
        conn.outbox.push_message(bytes, binary)
    };
}

/// [`ConnHandle::deliver`] for a message of either kind.
fn send_direct_or_queue(conn: &ConnHandle, bytes: Bytes, binary: bool) -> Result<(), PushError> {
    let gate = conn
        .outbox
        .direct_or_push_message(&bytes, binary, || conn.wire.claim_direct())?;
    if gate == Claim::Queued {
        return Ok(());
    }
    let ws_frame = crate::direct_write::data_frame(binary, &bytes);
    match conn.wire.send_claimed(&ws_frame, || ws_frame.clone()) {
        Direct::Sent => Ok(()),
        Direct::Half => {
            conn.outbox.finish_direct();
            Ok(())
        }
        Direct::NotSent => conn.outbox.push_message(bytes, binary),
    }
}

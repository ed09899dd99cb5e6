//! The start of a connection: the `hello` frame, authentication, and either
//! a new session or the resume of a parked (or still attached) one.

use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::{close, ClientFrame, ErrorCode, RoomStatus, ServerFrame, Since};
use yawc::OpCode;

use std::borrow::Cow;

use super::{send_now, Ended, Socket, Upgrade, LONG_PONG, MAX_CONTROL_PAYLOAD};
use crate::conn_handle::ConnHandle;
use crate::node::Node;
use crate::outbox::Outbox;

/// A connection past `hello`.
pub struct Established {
    pub conn: Arc<ConnHandle>,
    /// Rooms restored by a resume, then those of server-side subscriptions.
    pub rooms: Vec<String>,
    /// Those of `rooms` joined as server-side subscriptions.
    pub granted: Vec<String>,
    /// Every server-side subscription of the token (or connect proxy).
    pub subs: Vec<String>,
}

/// The close code and reason a connection is refused with.
pub type Refusal = (u16, Cow<'static, str>);

/// Why a connection did not get past `hello`.
pub enum Refused {
    /// The node refuses it with this close.
    Close(Refusal),
    /// The peer ended it first (a close frame, a broken frame, or gone).
    Ended(Ended),
}

pub async fn run(
    node: &Arc<Node>,
    ws: &mut Socket,
    upgrade: &Upgrade,
) -> Result<Established, Refused> {
    let hello_timeout = Duration::from_millis(node.config.heartbeat.hello_timeout_ms);
    let first = tokio::select! {
        first = tokio::time::timeout(hello_timeout, first_data_frame(ws)) => first,
        _ = node.drain.started() => {
            return Err(Refused::Close((close::RESTART, "node shutting down".into())))
        }
    };
    let payload = match first {
        Err(_) => return Err(Refused::Close((close::TIMEOUT, "no hello in time".into()))),
        Ok(Err(ended)) => return Err(Refused::Ended(ended)),
        Ok(Ok(payload)) => payload,
    };
    hello(node, ws, upgrade, payload)
        .await
        .map_err(Refused::Close)
}

/// Authenticates the `hello` in `payload` and starts or resumes its session.
async fn hello(
    node: &Arc<Node>,
    ws: &mut Socket,
    upgrade: &Upgrade,
    payload: bytes::Bytes,
) -> Result<Established, Refusal> {
    let codec = upgrade.codec;
    let bearer = upgrade.bearer.as_deref();
    let decoded = codec.decode::<ClientFrame>(&payload);
    node.metrics.frame_in(decoded.as_ref().ok());
    let (id, token, resume) = match decoded {
        Ok(ClientFrame::Hello { id, token, resume }) => (id, token, resume),
        Ok(other) => {
            let error = ServerFrame::error(
                other.id(),
                ErrorCode::BadRequest,
                "the first frame must be hello",
            );
            send_now(ws, codec, &error).await;
            return Err((close::PROTOCOL_VIOLATION, "hello expected".into()));
        }
        Err(e) => {
            send_now(
                ws,
                codec,
                &ServerFrame::error(e.id, ErrorCode::BadRequest, e.message),
            )
            .await;
            return Err((close::PROTOCOL_VIOLATION, "hello expected".into()));
        }
    };

    let fresh: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
    let token = token.as_deref().or(bearer);
    let identity = match node.auth.authenticate(token, &fresh) {
        Ok(identity) => identity,
        Err(e) => {
            node.metrics.reject(crate::metrics::Rejection::Unauthorized);
            send_now(
                ws,
                codec,
                &ServerFrame::error(id, ErrorCode::Unauthorized, e.to_string()),
            )
            .await;
            return Err((close::UNAUTHORIZED, "unauthorized".into()));
        }
    };
    let request = crate::proxy::ConnectRequest {
        remote: upgrade.remote,
        binary: upgrade.codec.is_binary(),
        headers: &upgrade.headers,
    };
    let live = node.live.get_full();
    let identity = match crate::proxy::connect(
        &live.proxy,
        &node.metrics,
        &request,
        token,
        identity,
        resume.is_some(),
    )
    .await
    {
        Ok(identity) => identity,
        Err((code, message, close_code)) => {
            node.metrics.reject(crate::metrics::Rejection::Unauthorized);
            let reason = close_reason(&message);
            send_now(ws, codec, &ServerFrame::error(id, code, message)).await;
            return Err((close_code, reason.into()));
        }
    };

    let taken = match &resume {
        Some(r) => node.lifecycle().take(r, &identity).await,
        None => None,
    };
    let resumed = taken.is_some();
    if let Some(r) = &resume {
        tracing::debug!(session = %r.session, resumed, "resume asked");
    }
    if resume.is_some() {
        if resumed {
            node.metrics.resumes_ok.inc();
        } else {
            node.metrics.resumes_failed.inc();
        }
    }
    let (session, mut identity, held_elsewhere) = match taken {
        Some(t) => (t.session, t.identity, t.held_elsewhere),
        None => (fresh, identity, Vec::new()),
    };
    let limits = &node.live.get().config.limits.clone();
    if let Err(refusal) = node.check_user_limit(&identity, &session).await {
        send_now(
            ws,
            codec,
            &ServerFrame::error(id, ErrorCode::LimitExceeded, refusal.clone()),
        )
        .await;
        return Err((close::USER_LIMIT, "connection limit reached".into()));
    }
    let expires_at = identity.expires_at;
    let subs = std::mem::take(&mut identity.subs);
    let conn = Arc::new(
        ConnHandle::new(
            node.next_conn_id(),
            session,
            identity,
            codec,
            Outbox::new(limits.outbound_queue_frames, limits.outbound_queue_bytes),
        )
        .with_socket(upgrade.fd, node.config.heartbeat.direct_ping)
        .with_expiry(expires_at),
    );
    // The presence service hears of the session (`connect`) before any
    // of the restored rooms below (`join`).
    if let Some(old) = node.hub.register(&conn, || node.connected(&conn)) {
        if old.id != conn.id {
            old.take_over();
            old.outbox
                .close(close::NORMAL, "session resumed on another connection");
        }
    }

    // Resumed on the token's word while the presence service listed the
    // session on other nodes: their connections of it, if still open, go.
    if !held_elsewhere.is_empty() {
        node.session_moved(&conn.session, &held_elsewhere);
    }

    // Restore the rooms of a resumed session: join each (buffering), then
    // welcome, then the missed messages of each room.
    let mut rooms = Vec::new();
    let mut reads = Vec::new();
    if let (true, Some(resume)) = (resumed, &resume) {
        for r in &resume.rooms {
            if rooms.len() >= limits.max_rooms_per_connection
                || rooms.contains(&r.room)
                || node.check_room(&r.room).is_err()
                || !(conn.may_join(&r.room) || subs.contains(&r.room))
            {
                continue;
            }
            let rules = node.live.get().config.room_rules(&r.room);
            if conn.identity.anonymous && !rules.anonymous {
                continue;
            }
            let since = Since {
                offset: r.offset,
                epoch: r.epoch.clone(),
            };
            let presence = r.presence.unwrap_or(false) && rules.presence;
            if let Ok(Some(read)) = node
                .begin_join(&conn, &r.room, Some(&since), presence)
                .await
            {
                rooms.push(r.room.clone());
                reads.push(read);
            }
        }
    }
    let welcome = ServerFrame::Welcome {
        id,
        session: conn.session.to_string(),
        resume_token: node.signer.sign(&conn.session, conn.user()),
        user: conn.user().to_string(),
        node: node.id.to_string(),
        ping_interval_ms: node.config.heartbeat.ping_interval_ms,
        resumed,
        rooms: rooms
            .iter()
            .zip(&reads)
            .map(|(room, read)| RoomStatus {
                room: room.clone(),
                offset: read.position.offset,
                epoch: read.position.epoch.to_string(),
                recovered: matches!(read.recovery, Some(roomcast_broker::Recovery::Recovered(_))),
            })
            .collect(),
        token_expires_at: expires_at,
    };
    node.metrics.frame_out(&welcome);
    let _ = conn.send(&welcome);
    for (room, read) in rooms.iter().zip(&reads) {
        node.finish_join(&conn, room, read).await;
    }
    // Server-side subscriptions: the rooms the token (or the connect
    // proxy) names, each announced by a `joined` without an id. A resume
    // restored those it was in already.
    let mut granted = Vec::new();
    for room in subs.iter().cloned() {
        if rooms.contains(&room) {
            granted.push(room);
            continue;
        }
        if rooms.len() >= limits.max_rooms_per_connection {
            continue;
        }
        if let Err(e) = node.check_room(&room) {
            tracing::debug!(room, error = %e.message, "subs: room refused");
            continue;
        }
        // A session that could not be resumed: the client's position in
        // the room, when its `hello` listed one, recovers what it missed.
        let since = resume.as_ref().and_then(|r| {
            r.rooms.iter().find(|rr| rr.room == room).map(|rr| Since {
                offset: rr.offset,
                epoch: rr.epoch.clone(),
            })
        });
        match node.begin_join(&conn, &room, since.as_ref(), false).await {
            Ok(Some(read)) => {
                let joined = ServerFrame::Joined {
                    id: None,
                    room: room.clone(),
                    offset: read.position.offset,
                    epoch: read.position.epoch.to_string(),
                    recovered: since.as_ref().map(|_| {
                        matches!(read.recovery, Some(roomcast_broker::Recovery::Recovered(_)))
                    }),
                };
                node.metrics.frame_out(&joined);
                let _ = conn.send(&joined);
                node.finish_join(&conn, &room, &read).await;
                granted.push(room.clone());
                rooms.push(room);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(room, error = %e.message, "subs: join failed"),
        }
    }
    Ok(Established {
        conn,
        rooms,
        granted,
        subs,
    })
}

/// A close reason fits in 123 bytes; cut at a character boundary.
fn close_reason(message: &str) -> String {
    let mut end = message.len().min(120);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// The payload of the first text or binary frame, or how the peer ended
/// the connection before it.
async fn first_data_frame(ws: &mut Socket) -> Result<bytes::Bytes, Ended> {
    loop {
        let frame = ws.next_frame().await.map_err(Ended::Failed)?;
        match frame.opcode() {
            OpCode::Text | OpCode::Binary => return Ok(frame.into_payload()),
            OpCode::Close => return Err(Ended::PeerClosed(frame)),
            OpCode::Pong if frame.payload().len() > MAX_CONTROL_PAYLOAD => {
                return Err(Ended::Broken(LONG_PONG))
            }
            _ => {}
        }
    }
}

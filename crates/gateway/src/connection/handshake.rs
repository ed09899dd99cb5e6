//! The start of a connection: the `hello` frame, authentication, and either
//! a new session or the resume of a parked (or still attached) one.

use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::{close, ClientFrame, ErrorCode, Resume, RoomStatus, ServerFrame, Since};
use yawc::OpCode;

use std::borrow::Cow;

use super::{send_now, Ended, Socket, Upgrade, LONG_PONG, MAX_CONTROL_PAYLOAD};
use crate::auth::Identity;
use crate::handle::{ConnHandle, SessionFate};
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::Taken;

/// A connection past `hello`.
pub struct Established {
    pub conn: Arc<ConnHandle>,
    /// Rooms restored by a resume.
    pub rooms: Vec<String>,
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
        Some(r) => take_session(node, r, &identity).await,
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
    let (session, identity, held_elsewhere) = match taken {
        Some(t) => (t.session, t.identity, t.held_elsewhere),
        None => (fresh, identity, Vec::new()),
    };
    let limits = &node.live.get().config.limits.clone();
    let conn = Arc::new(
        ConnHandle::new(
            node.next_conn_id(),
            session,
            identity,
            codec,
            Outbox::new(limits.outbound_queue_frames, limits.outbound_queue_bytes),
        )
        .with_socket(upgrade.fd, node.config.heartbeat.direct_ping),
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
                || !conn.identity.may_join(&r.room)
            {
                continue;
            }
            let since = Since {
                offset: r.offset,
                epoch: r.epoch.clone(),
            };
            let presence = r.presence.unwrap_or(false);
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
    };
    node.metrics.frame_out(&welcome);
    let _ = conn.send(&welcome);
    for (room, read) in rooms.iter().zip(&reads) {
        node.finish_join(&conn, room, read).await;
    }
    Ok(Established { conn, rooms })
}

/// Longest a resume waits for the old connection's teardown to park the
/// session: longer than a park may take (the presence client's 1 s query
/// timeout).
const PARK_PATIENCE: Duration = Duration::from_secs(2);

/// A session a resume takes.
struct Resumed {
    session: Arc<str>,
    identity: Identity,
    /// Other nodes the presence service lists as holding it.
    held_elsewhere: Vec<String>,
}

/// Takes over the session named in `resume` when its token proves it and
/// the user matches; returns the session id and the identity to use. The
/// token is checked before the store is touched.
async fn take_session(node: &Node, resume: &Resume, presented: &Identity) -> Option<Resumed> {
    let here = |session: Arc<str>, identity: Identity| Resumed {
        session,
        identity,
        held_elsewhere: Vec::new(),
    };
    let owner = node.signer.verify(&resume.token, &resume.session)?;
    if !presented.anonymous && *presented.user != *owner {
        return None;
    }
    // A token, when given, brings fresh claims; anonymous resumes keep theirs.
    let pick = |kept: Identity| {
        if presented.anonymous {
            kept
        } else {
            presented.clone()
        }
    };
    // The hub first, then the parked sessions: a connection's teardown
    // parks its session before the hub lets go of it, so a resume racing
    // the teardown finds it in one or the other.
    if let Some(live) = node.hub.by_session(&resume.session) {
        if *live.identity.user != *owner {
            return None;
        }
        match live.take_over() {
            // Taken from the live connection, which will not park it.
            SessionFate::Held => {
                return Some(here(live.session.clone(), pick(live.identity.clone())))
            }
            // Its teardown is parking it: the parked copy is the one to
            // take, once it is there.
            SessionFate::Parking => {
                node.hub.await_park(&live, PARK_PATIENCE).await;
                // Disconnected by the API meanwhile: its teardown drops
                // the copy once the hub has let go of it.
                if live.fate() == SessionFate::Ended {
                    return None;
                }
            }
            SessionFate::Parked => {}
            // Disconnected by the API, its close still under way.
            SessionFate::Ended => return None,
        }
    }
    // What the parked store says: `Some(answer)` when it decides the
    // resume (resumed, or refused: ended or another user's), `None` when
    // it holds nothing for the session.
    let parked = |taken: Taken| match taken {
        Taken::Parked(parked) if *parked.user == *owner => {
            Some(Some(here(Arc::from(resume.session.as_str()), pick(parked))))
        }
        Taken::Parked(_) | Taken::Ended => Some(None),
        Taken::Nothing => None,
    };
    if !node.sessions.is_remote() {
        return parked(node.sessions.take(&resume.session).await).flatten();
    }
    // Cluster: one question asks the parked store and the listing. A
    // session the presence service still lists resumes on the token's
    // word: its node crashed and its lease has not run out yet, or its
    // node still holds it (the client came back here before that node saw
    // its old socket die), and is told it moved. Such a session is claimed
    // for this node before it is taken: the node listing it may still park
    // it (its connection of it ending now, or a drain's park landing late),
    // and a copy parked then would let the session resume a second time
    // while it is live here. The claim refuses that park; one that came
    // first is taken now, and resumes here like any park. The service
    // reads the listing before it takes, and a node parks a session before
    // it unlists it, so a session found unlisted was parked by then, if
    // it was parked at all.
    let first = node.sessions.take_or_claim(&resume.session, &owner).await;
    if let Some(listed) = first.listed {
        if let Some(outcome) = parked(first.taken) {
            return outcome;
        }
        if listed.is_empty() {
            return None;
        }
        let mut held_elsewhere = listed;
        // Another node claimed it before: a resume there on the token's
        // word too, so recent that the service does not list it there yet.
        // It is told the session moved on, like the nodes listing it.
        held_elsewhere.extend(first.displaced.filter(|d| !held_elsewhere.contains(d)));
        held_elsewhere.retain(|n| *n != *node.id);
        return Some(Resumed {
            session: Arc::from(resume.session.as_str()),
            identity: pick(Identity::anonymous_user(&owner)),
            held_elsewhere,
        });
    }
    // A service older than that question answered a plain take: the
    // listing and the claim are asked one after the other.
    if let Some(outcome) = parked(first.taken) {
        return outcome;
    }
    let mut held_elsewhere = node.sessions.listed_on(&resume.session, &owner).await?;
    if held_elsewhere.is_empty() {
        // Neither parked nor listed: its old node may have moved it from
        // one to the other between the two questions (a draining node
        // parks a session, then drops its listing). That node parks
        // before it unlists, so a session unlisted by now is parked by
        // now, unless it was never parked at all: ask once more.
        return parked(node.sessions.take(&resume.session).await).flatten();
    }
    // Claimed before it resumes here, as above.
    let (taken, displaced) = node.sessions.claim(&resume.session).await;
    let identity = match taken {
        Taken::Parked(parked) if *parked.user == *owner => pick(parked),
        Taken::Parked(_) | Taken::Ended => return None,
        Taken::Nothing => pick(Identity::anonymous_user(&owner)),
    };
    held_elsewhere.extend(displaced.filter(|d| !held_elsewhere.contains(d)));
    held_elsewhere.retain(|n| *n != *node.id);
    Some(Resumed {
        session: Arc::from(resume.session.as_str()),
        identity,
        held_elsewhere,
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

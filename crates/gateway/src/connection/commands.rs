//! What each client command does once the connection is established.
//! Each arm checks the command against the connection's permissions and
//! limits, then calls the node; the reply (or the error) goes back to the
//! caller, which queues it.

use std::sync::Arc;

use roomcast_protocol::{ClientFrame, ErrorCode, ServerFrame};

use crate::conn_handle::ConnHandle;
use crate::error::NodeError;
use crate::metrics::RefreshOutcome;
use crate::node::Node;

/// What the connection's commands change, owned by the command running
/// (one at a time) and otherwise by the connection's task.
pub struct State {
    /// Rooms joined, in join order.
    pub rooms: Vec<String>,
    /// Those of `rooms` that the application granted (its join proxy, or
    /// server-side subscriptions) rather than the token's patterns: a
    /// refresh does not take them away.
    pub granted: Vec<String>,
    /// The server-side subscriptions (`subs`): joined at `hello`, and
    /// joinable again after a leave.
    pub subs: Vec<String>,
}

pub async fn handle(
    node: &Arc<Node>,
    conn: &Arc<ConnHandle>,
    state: &mut State,
    frame: ClientFrame,
) -> Result<Option<ServerFrame>, NodeError> {
    match frame {
        ClientFrame::Hello { .. } => Err(NodeError::bad_request("hello was already received")),
        ClientFrame::Join {
            id,
            room,
            since,
            presence,
        } => {
            node.check_room(&room)?;
            let rules = node.live.get().config.room_rules(&room);
            if conn.identity.anonymous && !rules.anonymous {
                return Err(NodeError::new(
                    ErrorCode::Forbidden,
                    format!("anonymous connections may not join {room}"),
                ));
            }
            let backend_allowed = if state.rooms.contains(&room) {
                false
            } else {
                crate::proxy::join(&node.live.get_full().proxy, &node.metrics, conn, &room).await?
            };
            let already = state.rooms.contains(&room);
            if !already && !backend_allowed && !conn.may_join(&room) && !state.subs.contains(&room)
            {
                return Err(NodeError::new(
                    ErrorCode::Forbidden,
                    format!("the token does not allow joining {room}"),
                ));
            }
            // The limit in force now (it changes with a reload).
            let max_rooms = node.live.get().config.limits.max_rooms_per_connection;
            if !already && state.rooms.len() >= max_rooms {
                return Err(NodeError::new(
                    ErrorCode::LimitExceeded,
                    format!("a connection may be in at most {max_rooms} rooms"),
                ));
            }
            // Presence off in the room's namespace: no presence events.
            let presence = presence.unwrap_or(false) && rules.presence;
            match node
                .begin_join(conn, &room, since.as_ref(), presence)
                .await?
            {
                None => {
                    let read = node.broker.read(&room, None).await?;
                    Ok(Some(ServerFrame::Joined {
                        id,
                        room,
                        offset: read.position.offset,
                        epoch: read.position.epoch.to_string(),
                        recovered: None,
                    }))
                }
                Some(read) => {
                    let joined = ServerFrame::Joined {
                        id,
                        room: room.clone(),
                        offset: read.position.offset,
                        epoch: read.position.epoch.to_string(),
                        recovered: since.as_ref().map(|_| {
                            matches!(read.recovery, Some(roomcast_broker::Recovery::Recovered(_)))
                        }),
                    };
                    // `joined` must precede the recovered messages.
                    node.metrics.frame_out(&joined);
                    let _ = conn.send(&joined);
                    node.finish_join(conn, &room, &read).await;
                    if backend_allowed {
                        state.granted.push(room.clone());
                    }
                    state.rooms.push(room);
                    Ok(None)
                }
            }
        }
        ClientFrame::Leave { id, room } => {
            let Some(i) = state.rooms.iter().position(|r| *r == room) else {
                return Err(not_joined(&room, "leaving"));
            };
            state.rooms.swap_remove(i);
            state.granted.retain(|r| *r != room);
            node.leave(conn, &room).await;
            Ok(Some(ServerFrame::Left {
                id,
                room,
                reason: None,
            }))
        }
        ClientFrame::Publish {
            id,
            room,
            data,
            key,
        } => {
            if !state.rooms.contains(&room) && !conn.may_publish_unjoined(&room) {
                node.check_room(&room)?;
                return Err(not_joined(&room, "publishing to"));
            }
            if !node.live.get().config.room_rules(&room).client_publish {
                return Err(NodeError::new(
                    ErrorCode::Forbidden,
                    format!("clients may not publish to {room}"),
                ));
            }
            let data = crate::proxy::publish(
                &node.live.get_full().proxy,
                &node.metrics,
                conn,
                &room,
                data,
            )
            .await?;
            let published = node
                .publish(&room, data, Some(conn.member()), key.as_deref())
                .await?;
            Ok(id.map(|id| ServerFrame::Ack {
                id,
                offset: Some(published.offset),
                duplicate: published.duplicate,
            }))
        }
        ClientFrame::Send { id, to, data } => {
            node.send(&to, data, Some(conn.member())).await?;
            Ok(id.map(|id| ServerFrame::Ack {
                id,
                offset: None,
                duplicate: false,
            }))
        }
        ClientFrame::Presence { id, room } => {
            if !state.rooms.contains(&room) && !conn.may_join(&room) {
                node.check_room(&room)?;
                return Err(not_joined(&room, "asking for the presence of"));
            }
            if !node.live.get().config.room_rules(&room).presence {
                return Err(NodeError::new(
                    ErrorCode::Forbidden,
                    format!("presence is off for {room}"),
                ));
            }
            let members = node.presence(&room).await?;
            Ok(Some(ServerFrame::Presence { id, room, members }))
        }
        ClientFrame::Ping { id } => Ok(Some(ServerFrame::Pong { id })),
        ClientFrame::Refresh { id, token } => refresh(node, conn, state, id, &token).await,
        ClientFrame::Rpc { id, method, data } => {
            let data = crate::proxy::rpc(
                &node.live.get_full().proxy,
                &node.metrics,
                conn,
                &method,
                data,
            )
            .await?;
            Ok(Some(ServerFrame::RpcResult { id, data }))
        }
    }
}

/// A `refresh`: a valid token of the same user replaces the connection's
/// expiry and room patterns; rooms the new patterns no longer allow are
/// left (`left` with reason `forbidden`). A refused refresh changes nothing.
async fn refresh(
    node: &Arc<Node>,
    conn: &Arc<ConnHandle>,
    state: &mut State,
    id: Option<u64>,
    token: &str,
) -> Result<Option<ServerFrame>, NodeError> {
    let refused = |code, message: String| {
        node.metrics.refresh(RefreshOutcome::Refused);
        Err(NodeError::new(code, message))
    };
    let identity = match node.auth.authenticate(Some(token), &conn.session) {
        Ok(identity) if !identity.anonymous && identity.expires_at.is_some() => identity,
        Ok(_) => {
            return refused(
                ErrorCode::Unauthorized,
                "refresh needs a token (none is configured)".into(),
            )
        }
        Err(e) => return refused(ErrorCode::Unauthorized, e.to_string()),
    };
    if identity.user != *conn.user() {
        return refused(
            ErrorCode::Forbidden,
            "the token is another user's; the connection's token stands".into(),
        );
    }
    let expires_at = identity.expires_at.unwrap_or_default();
    // No grace for a refresh: a token already past its `exp` is refused.
    if expires_at.saturating_mul(1000) <= crate::conn_handle::unix_ms() {
        return refused(ErrorCode::Unauthorized, "the token has expired".into());
    }
    let subs = identity.subs.clone();
    state.subs.clone_from(&subs);
    conn.refresh(identity);
    node.registry.expiry_moved(conn);
    node.metrics.refresh(RefreshOutcome::Refreshed);
    let gone: Vec<String> = state
        .rooms
        .iter()
        .filter(|r| !state.granted.contains(r) && !subs.contains(r) && !conn.may_join(r))
        .cloned()
        .collect();
    for room in gone {
        state.rooms.retain(|r| *r != room);
        node.leave(conn, &room).await;
        let left = ServerFrame::Left {
            id: None,
            room,
            reason: Some("forbidden".into()),
        };
        node.metrics.frame_out(&left);
        let _ = conn.send(&left);
    }
    Ok(Some(ServerFrame::Refreshed { id, expires_at }))
}

fn not_joined(room: &str, doing: &str) -> NodeError {
    NodeError::new(
        ErrorCode::NotJoined,
        format!("join {room} before {doing} it"),
    )
}

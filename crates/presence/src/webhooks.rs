//! The state's events as the backend's webhooks see them.
//!
//! In a cluster the presence service is the one place that orders every
//! presence change, so it alone sends webhooks: each event exactly once,
//! cluster-wide. They are queued (with [`roomcast_hooks::webhook::Webhooks`])
//! under the state lock, next to the Redis events, so their order is the
//! order the state produced them. A silent rebuild after this process's own
//! restart produces no event, so no webhook either.

use roomcast_hooks::webhook::WebhookEvent;

use crate::state::Event;

/// The webhook event announcing `event`.
pub fn webhook_event(event: &Event) -> WebhookEvent {
    match event {
        Event::Join { room, member } => {
            WebhookEvent::presence_join(room, &member.user, &member.session)
        }
        Event::Leave { room, member } => {
            WebhookEvent::presence_leave(room, &member.user, &member.session)
        }
        Event::Occupied { room } => WebhookEvent::room_occupied(room),
        Event::Vacated { room } => WebhookEvent::room_vacated(room),
        Event::SessionEnd { member, reason } => {
            WebhookEvent::session_end(&member.user, &member.session, *reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EndReason;
    use roomcast_hooks::webhook::EventType;
    use roomcast_protocol::Member;

    #[test]
    fn every_state_event_has_its_webhook() {
        let member = Member {
            user: "alice".into(),
            session: "s1".into(),
            info: Some(serde_json::json!({"name": "Alice"})),
        };
        let join = webhook_event(&Event::Join {
            room: "lobby".into(),
            member: member.clone(),
        });
        assert_eq!(join.kind, EventType::PresenceJoin);
        assert_eq!(
            (
                join.room.as_deref(),
                join.user.as_deref(),
                join.session.as_deref()
            ),
            (Some("lobby"), Some("alice"), Some("s1"))
        );
        let leave = webhook_event(&Event::Leave {
            room: "lobby".into(),
            member: member.clone(),
        });
        assert_eq!(leave.kind, EventType::PresenceLeave);
        let occupied = webhook_event(&Event::Occupied {
            room: "lobby".into(),
        });
        assert_eq!(
            (occupied.kind, occupied.room.as_deref(), occupied.user),
            (EventType::RoomOccupied, Some("lobby"), None)
        );
        let vacated = webhook_event(&Event::Vacated {
            room: "lobby".into(),
        });
        assert_eq!(vacated.kind, EventType::RoomVacated);
        for reason in [EndReason::Closed, EndReason::Expired, EndReason::NodeLost] {
            let end = webhook_event(&Event::SessionEnd {
                member: member.clone(),
                reason,
            });
            assert_eq!(end.kind, EventType::SessionEnd);
            assert_eq!(end.reason, Some(reason));
            assert_eq!(end.session.as_deref(), Some("s1"));
            assert_eq!(end.room, None);
        }
        assert_ne!(join.id, leave.id);
    }
}

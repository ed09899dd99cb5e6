//! What a webhook tells: [`WebhookEvent`]s, of an [`EventType`] (and, for
//! `session_end`, an [`EndReason`]), sent in [`Batch`]es.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What happened: the `type` of a webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A session entered a room.
    PresenceJoin,
    /// A session left a room (it left, ended, or was purged).
    PresenceLeave,
    /// A room got its first member, cluster-wide.
    RoomOccupied,
    /// A room lost its last member, cluster-wide.
    RoomVacated,
    /// A session is gone for good.
    SessionEnd,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::PresenceJoin,
        EventType::PresenceLeave,
        EventType::RoomOccupied,
        EventType::RoomVacated,
        EventType::SessionEnd,
    ];

    /// The name on the wire and in `webhooks.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PresenceJoin => "presence_join",
            EventType::PresenceLeave => "presence_leave",
            EventType::RoomOccupied => "room_occupied",
            EventType::RoomVacated => "room_vacated",
            EventType::SessionEnd => "session_end",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Its bit in a set of event types.
    pub(super) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Why a session ended (`session_end`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its connection ended and it was not resumed, or it was disconnected.
    Closed,
    /// It was handed off (drain) and not taken within the grace time.
    Expired,
    /// Its node's lease expired (the node crashed or was cut off).
    NodeLost,
}

/// One event of a webhook batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event; a retried batch carries the same ids.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
}

impl WebhookEvent {
    /// An event of `kind` happening now, with a fresh id and no fields.
    pub fn new(kind: EventType) -> WebhookEvent {
        WebhookEvent {
            id: uuid::Uuid::new_v4().simple().to_string(),
            kind,
            time_ms: now_ms(),
            room: None,
            user: None,
            session: None,
            reason: None,
        }
    }

    pub fn presence_join(
        room: impl Into<String>,
        user: impl Into<String>,
        session: impl Into<String>,
    ) -> WebhookEvent {
        WebhookEvent {
            room: Some(room.into()),
            user: Some(user.into()),
            session: Some(session.into()),
            ..WebhookEvent::new(EventType::PresenceJoin)
        }
    }

    pub fn presence_leave(
        room: impl Into<String>,
        user: impl Into<String>,
        session: impl Into<String>,
    ) -> WebhookEvent {
        WebhookEvent {
            kind: EventType::PresenceLeave,
            ..WebhookEvent::presence_join(room, user, session)
        }
    }

    pub fn room_occupied(room: impl Into<String>) -> WebhookEvent {
        WebhookEvent {
            room: Some(room.into()),
            ..WebhookEvent::new(EventType::RoomOccupied)
        }
    }

    pub fn room_vacated(room: impl Into<String>) -> WebhookEvent {
        WebhookEvent {
            room: Some(room.into()),
            ..WebhookEvent::new(EventType::RoomVacated)
        }
    }

    pub fn session_end(
        user: impl Into<String>,
        session: impl Into<String>,
        reason: EndReason,
    ) -> WebhookEvent {
        WebhookEvent {
            user: Some(user.into()),
            session: Some(session.into()),
            reason: Some(reason),
            ..WebhookEvent::new(EventType::SessionEnd)
        }
    }
}

/// The body of one webhook request (what a backend written in Rust reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub events: Vec<WebhookEvent>,
}

/// The same, borrowing the events.
#[derive(Serialize)]
pub(super) struct BatchRef<'a> {
    pub(super) events: &'a [WebhookEvent],
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

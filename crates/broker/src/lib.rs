//! The broker: where a published message gets its offset, is kept in the
//! room's history, and reaches every node that has members in the room.
//!
//! [`Broker`] is the one interface the gateway uses; [`memory::MemoryBroker`]
//! runs everything inside one process (the single-node default), and the
//! Redis engine does the same across nodes. Delivery to local members goes
//! through a [`Delivery`] sink (the gateway's hub), always in offset order per
//! room.

pub mod memory;
pub mod message;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use roomcast_protocol::envelope::Envelope;
use roomcast_protocol::{Data, Member, Since};

pub use message::RoomMessage;

/// Where a room's stream stands: its latest offset and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// What a read found for a client that asked to recover from `since`.
#[derive(Debug, Clone)]
pub enum Recovery {
    /// Every message after `since.offset`, in order (possibly none).
    Recovered(Vec<Arc<RoomMessage>>),
    /// The epoch changed or part of the gap has left history: replay nothing.
    NotRecoverable,
}

/// The answer to [`Broker::read`].
#[derive(Debug, Clone)]
pub struct HistoryRead {
    pub position: Position,
    /// `None` when the read did not ask to recover.
    pub recovery: Option<Recovery>,
}

/// History retention for a room.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Messages kept per room.
    pub size: usize,
    /// How long a message is kept.
    pub ttl: std::time::Duration,
    /// How long a publish's idempotency key is remembered
    /// (`publish.idempotency_window_ms`).
    pub idempotency_window: std::time::Duration,
}

/// History retention of every room: the defaults, and the namespaces that
/// have their own (`namespaces.<ns>.history.*`: a room `ns:rest` is in
/// namespace `ns`). Replaced as a whole by a configuration reload.
pub struct Retention {
    default: HistoryLimits,
    namespaces: arc_swap::ArcSwap<std::collections::HashMap<String, HistoryLimits>>,
}

impl Retention {
    pub fn new(default: HistoryLimits) -> std::sync::Arc<Retention> {
        std::sync::Arc::new(Retention {
            default,
            namespaces: arc_swap::ArcSwap::default(),
        })
    }

    /// The namespaces with their own limits; the others keep the defaults.
    pub fn set_namespaces(&self, namespaces: std::collections::HashMap<String, HistoryLimits>) {
        self.namespaces.store(std::sync::Arc::new(namespaces));
    }

    /// The limits of `room`.
    pub fn of(&self, room: &str) -> HistoryLimits {
        let namespaces = self.namespaces.load();
        if namespaces.is_empty() {
            return self.default;
        }
        room.split_once(':')
            .and_then(|(ns, _)| namespaces.get(ns).copied())
            .unwrap_or(self.default)
    }

    /// The defaults (rooms outside any namespace with its own).
    pub fn default_limits(&self) -> HistoryLimits {
        self.default
    }

    /// The longest TTL of any namespace or the defaults.
    pub fn longest_ttl(&self) -> std::time::Duration {
        self.namespaces
            .load()
            .values()
            .map(|l| l.ttl)
            .fold(self.default.ttl, std::cmp::max)
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub offset: u64,
    pub epoch: Arc<str>,
    /// The key was seen within the window: this is the first publish's
    /// answer, and nothing was stored or delivered again.
    pub duplicate: bool,
}

/// A room's latest messages still in history ([`Broker::recent`]).
#[derive(Debug, Clone)]
pub struct Recent {
    pub position: Position,
    /// Oldest first; at most the limit asked for.
    pub messages: Vec<Arc<RoomMessage>>,
}

/// One node's latest stats record ([`Broker::report_node`]), as another
/// node reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub node: String,
    /// How long ago the record was written, by the store's clock (so the
    /// nodes' clocks need not agree).
    pub age: std::time::Duration,
    pub record: Vec<u8>,
}

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The store cannot be reached or did not answer in time; nothing was stored.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Receives the messages the broker has for rooms with local members, in
/// offset order per room, and the control envelopes addressed to this node
/// (presence events of those rooms, direct messages, disconnects).
pub trait Delivery: Send + Sync + 'static {
    fn deliver(&self, message: Arc<RoomMessage>);
    fn control(&self, envelope: Envelope);
    /// How many pub/sub messages wait behind the one about to be
    /// dispatched, told before each. A hub may spend more of the
    /// dispatcher's time per message while nothing waits.
    fn backlog(&self, _waiting: usize) {}
}

/// Where a control envelope goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The node with this id.
    Node(String),
    /// Every node.
    AllNodes,
    /// Every node with members in this room (presence events).
    Room(String),
}

/// One interface, two engines (in-memory and Redis).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Appends `data` to the room's history with the next offset and delivers
    /// it to every node with members. An `Ok` means the message is stored.
    /// `trace` is the W3C `traceparent` of the publishing span, if traced.
    /// With a `key` (already checked by `valid_idempotency_key`), a publish
    /// to the room with the same key within the idempotency window is not
    /// stored again: it gets the first one's offset and epoch, marked
    /// `duplicate`. The check and the append are one atomic step.
    async fn publish(
        &self,
        room: &str,
        data: Data,
        from: Option<Member>,
        trace: Option<String>,
        key: Option<&str>,
    ) -> Result<Published, BrokerError>;

    /// Starts delivering the room's messages to this node (first local member).
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// Stops delivering the room's messages to this node (last member left).
    async fn unsubscribe(&self, room: &str);

    /// The room's position and, with `since`, the messages after it.
    async fn read(&self, room: &str, since: Option<&Since>) -> Result<HistoryRead, BrokerError>;

    /// Sends a control envelope (direct message, disconnect) to one node or
    /// to all of them. Not stored.
    async fn send_control(&self, route: Route, envelope: Envelope) -> Result<(), BrokerError>;

    /// The room's position and its latest `limit` messages still in
    /// history (within `history.size` and `history.ttl_ms`), oldest first;
    /// `None` for a room the store does not know. Unlike
    /// [`Broker::read`], it never creates the room.
    async fn recent(&self, room: &str, limit: usize) -> Result<Option<Recent>, BrokerError>;

    /// Stores this node's stats record (opaque bytes) where the other
    /// nodes can read it, replacing its previous one. A record not renewed
    /// within `forget_after` is dropped. The in-memory engine serves one
    /// node, which needs no one else's view: it keeps nothing.
    async fn report_node(
        &self,
        _node: &str,
        _record: Vec<u8>,
        _forget_after: std::time::Duration,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Every node's latest record (this node's own included) younger than
    /// `forget_after`; older ones are removed on the way.
    async fn node_reports(
        &self,
        _forget_after: std::time::Duration,
    ) -> Result<Vec<NodeReport>, BrokerError> {
        Ok(Vec::new())
    }

    /// Engine name for logs and `/api/stats` (`memory`, `redis`).
    fn engine(&self) -> &'static str;
}

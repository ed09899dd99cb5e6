//! Cross-node routing of what is not a room message: direct messages,
//! disconnects, and the notices that a session resumed elsewhere.
//!
//! On one node (the in-memory broker) the hub is everyone: a direct message
//! or a disconnect is carried out here. On a cluster a control envelope goes
//! through the broker to the nodes that own the target's sessions, as the
//! presence engine knows them ([`Presence::owners`]), or to every node when
//! it cannot tell; each node's hub carries it out when the envelope arrives
//! (`Hub::control`). Which of the two is decided once, when the node starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use roomcast_broker::{Broker, Route};
use roomcast_protocol::envelope::{Envelope, Kind};
use roomcast_protocol::{Data, Member, Target};
use tracing::Instrument;

use crate::error::NodeError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::telemetry;

/// How long moved-session notices gather before they go out.
const MOVED_GATHER: Duration = Duration::from_millis(5);
/// Most sessions named in one moved-session envelope.
const MOVED_PER_ENVELOPE: usize = 500;

pub struct Routing {
    node_id: Arc<str>,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    metrics: Arc<Metrics>,
    /// One node: carried out by this node's hub, never through the broker.
    single_node: bool,
    /// Sessions resumed here that other nodes may still hold, by node,
    /// waiting to be told ([`Routing::session_moved`]).
    moved: Mutex<HashMap<String, Vec<String>>>,
}

impl Routing {
    pub fn new(
        node_id: Arc<str>,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        metrics: Arc<Metrics>,
        single_node: bool,
    ) -> Routing {
        Routing {
            node_id,
            hub,
            broker,
            presence,
            metrics,
            single_node,
            moved: Mutex::default(),
        }
    }

    fn envelope(&self, kind: Kind) -> Envelope {
        Envelope::new(kind, "", &self.node_id, roomcast_broker::message::now_us())
    }

    /// Delivers a direct message; returns how many connections it reached
    /// (or, on a cluster, how many sessions presence knows for the target).
    /// Only the nodes that own those sessions are sent to.
    pub async fn send(
        &self,
        to: &Target,
        data: Data,
        from: Option<Member>,
    ) -> Result<usize, NodeError> {
        if self.hub.targets(to).is_none() {
            return Err(NodeError::bad_request(
                "`to` must have exactly one of `user` or `session`",
            ));
        }
        if self.single_node {
            return Ok(self.hub.deliver_direct(to, data, from));
        }
        let span = if telemetry::enabled() {
            tracing::info_span!("send", node = %self.node_id)
        } else {
            tracing::Span::none()
        };
        async {
            let mut envelope = self.envelope(Kind::Direct);
            envelope.data = Some(data);
            envelope.from = from;
            envelope.target = Some(to.clone());
            envelope.trace = telemetry::current_traceparent();
            self.route(to, envelope).await
        }
        .instrument(span)
        .await
    }

    /// Closes the connections of a user or a session, here or on the nodes
    /// that own them. Returns how many were closed (on a cluster: how many
    /// sessions presence knows, or those on this node when it cannot tell).
    pub async fn disconnect(&self, to: &Target) -> Result<usize, NodeError> {
        if self.single_node {
            return Ok(self.hub.disconnect(to));
        }
        let mut envelope = self.envelope(Kind::Disconnect);
        envelope.target = Some(to.clone());
        self.route(to, envelope).await
    }

    /// Sends a control envelope to the nodes owning `to`'s sessions; to
    /// every node when presence cannot tell.
    async fn route(&self, to: &Target, envelope: Envelope) -> Result<usize, NodeError> {
        let Some(owners) = self.presence.owners(to).await else {
            let local = self.hub.targets(to).map(|t| t.len()).unwrap_or(0);
            self.metrics.routed_to_all.inc();
            self.broker.send_control(Route::AllNodes, envelope).await?;
            return Ok(local);
        };
        let mut nodes: Vec<&str> = owners.iter().map(String::as_str).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            self.metrics.routed_to_node.inc();
            self.broker
                .send_control(Route::Node(node.to_string()), envelope.clone())
                .await?;
        }
        Ok(owners.len())
    }

    /// Tells `nodes`, which presence listed as holding `session`, that it
    /// resumed here: each closes its connection of the session, if it still
    /// has one, without parking it. The notices wait [`MOVED_GATHER`] and go
    /// out together, one envelope per node and up to [`MOVED_PER_ENVELOPE`]
    /// sessions: a storm of resumes from a crashed node (whose channel
    /// nobody reads) costs a few publishes, and no resume waits for them.
    pub fn session_moved(self: &Arc<Self>, session: &str, nodes: &[String]) {
        let first = {
            let mut moved = self.moved.lock();
            let first = moved.is_empty();
            for to in nodes {
                moved
                    .entry(to.clone())
                    .or_default()
                    .push(session.to_string());
            }
            first
        };
        if !first {
            return;
        }
        let routing = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(MOVED_GATHER).await;
            let Some(routing) = routing.upgrade() else {
                return;
            };
            let moved = std::mem::take(&mut *routing.moved.lock());
            for (to, sessions) in moved {
                for chunk in sessions.chunks(MOVED_PER_ENVELOPE) {
                    let mut envelope = routing.envelope(Kind::Disconnect);
                    envelope.data = Some(serde_json::json!({ crate::hub::MOVED: chunk }));
                    if let Err(e) = routing
                        .broker
                        .send_control(Route::Node(to.clone()), envelope)
                        .await
                    {
                        tracing::warn!(error = %e, node = %to, sessions = chunk.len(),
                            "resumes not told to the sessions' old node");
                    }
                }
            }
        });
    }
}

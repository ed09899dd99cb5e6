//! This node's vital signs over the last two minutes, and the cluster's as
//! this node sees them (`GET /api/nodes`, the admin page).
//!
//! Every second the node takes a [`Reading`] (connections, rooms, its
//! publish and delivery counters, whether it drains), turns the counters
//! into rates, keeps the last [`SAMPLES`] in a ring, and hands the whole
//! [`NodeRecord`] to the broker ([`Broker::report_node`]). The Redis engine
//! keeps every node's latest record in one hash, stamped by Redis's clock,
//! so any node answers for the whole cluster with one read and no question
//! to the other nodes; the in-memory engine serves a single node and keeps
//! nothing. A record not renewed for [`FORGET_AFTER`] is dropped, one older
//! than [`LIVE_WITHIN`] is shown as not reporting. Why this design:
//! `docs/decisions.md`, "The cluster view".

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_broker::{Broker, NodeReport};
use serde::{Deserialize, Serialize};

/// How often a node samples itself and reports.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: two minutes.
pub const SAMPLES: usize = 120;
/// A node whose record is older than this is shown as not reporting.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);
/// A node silent for this long leaves the view.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What the node reads of itself once per interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub connections: u64,
    pub rooms: u64,
    /// Messages published through this node since it started.
    pub published: u64,
    /// Room messages queued to this node's members since it started.
    pub delivered: u64,
    pub draining: bool,
}

/// A node's record: its latest values and their history, oldest first,
/// one value per interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub engine: String,
    pub draining: bool,
    pub connections: u64,
    pub rooms: u64,
    pub published_per_second: f64,
    pub delivered_per_second: f64,
    pub history: History,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub interval_ms: u64,
    pub connections: Vec<u64>,
    pub rooms: Vec<u64>,
    pub published_per_second: Vec<f64>,
    pub delivered_per_second: Vec<f64>,
}

/// One node as the cluster view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Age of the record, in milliseconds (0 for the node answering).
    pub age_ms: u64,
    /// Whether the node reported within [`LIVE_WITHIN`].
    pub live: bool,
}

/// Every node this node knows of, by id. `error` says why the other
/// nodes' records could not be read (then `nodes` holds only this node).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Sample {
    connections: u64,
    rooms: u64,
    published_per_second: f64,
    delivered_per_second: f64,
}

struct State {
    samples: VecDeque<Sample>,
    last: Option<(Instant, Reading)>,
    record: NodeRecord,
}

/// This node's samples and its latest record.
pub struct NodeStats {
    node: Arc<str>,
    engine: &'static str,
    state: parking_lot::Mutex<State>,
}

/// A rate with one decimal: enough for a chart, short in JSON.
fn per_second(delta: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (delta as f64 / secs * 10.0).round() / 10.0
}

impl NodeStats {
    pub fn new(node: Arc<str>, engine: &'static str) -> Arc<NodeStats> {
        let record = NodeRecord {
            node: node.to_string(),
            engine: engine.to_string(),
            ..NodeRecord::default()
        };
        Arc::new(NodeStats {
            node,
            engine,
            state: parking_lot::Mutex::new(State {
                samples: VecDeque::with_capacity(SAMPLES),
                last: None,
                record,
            }),
        })
    }

    /// Adds a sample taken `now` and returns the new record.
    pub fn sample(&self, reading: Reading, now: Instant) -> NodeRecord {
        let mut state = self.state.lock();
        let (published, delivered) = match state.last {
            Some((at, last)) => {
                let elapsed = now.saturating_duration_since(at);
                (
                    per_second(reading.published.saturating_sub(last.published), elapsed),
                    per_second(reading.delivered.saturating_sub(last.delivered), elapsed),
                )
            }
            None => (0.0, 0.0),
        };
        state.last = Some((now, reading));
        if state.samples.len() == SAMPLES {
            state.samples.pop_front();
        }
        state.samples.push_back(Sample {
            connections: reading.connections,
            rooms: reading.rooms,
            published_per_second: published,
            delivered_per_second: delivered,
        });
        let samples = &state.samples;
        let history = History {
            interval_ms: INTERVAL.as_millis() as u64,
            connections: samples.iter().map(|s| s.connections).collect(),
            rooms: samples.iter().map(|s| s.rooms).collect(),
            published_per_second: samples.iter().map(|s| s.published_per_second).collect(),
            delivered_per_second: samples.iter().map(|s| s.delivered_per_second).collect(),
        };
        state.record = NodeRecord {
            node: self.node.to_string(),
            engine: self.engine.to_string(),
            draining: reading.draining,
            connections: reading.connections,
            rooms: reading.rooms,
            published_per_second: published,
            delivered_per_second: delivered,
            history,
        };
        state.record.clone()
    }

    /// The record of the last sample.
    pub fn record(&self) -> NodeRecord {
        self.state.lock().record.clone()
    }

    /// Samples every [`INTERVAL`] and reports to `broker`, until `read`
    /// answers `None` (the node is gone).
    pub fn spawn(
        self: &Arc<Self>,
        broker: Arc<dyn Broker>,
        read: impl Fn() -> Option<Reading> + Send + 'static,
    ) {
        let stats = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(stats), Some(reading)) = (stats.upgrade(), read()) else {
                    return;
                };
                let record = stats.sample(reading, Instant::now());
                let Ok(bytes) = serde_json::to_vec(&record) else {
                    continue;
                };
                if let Err(e) = broker.report_node(&stats.node, bytes, FORGET_AFTER).await {
                    tracing::debug!(error = %e, "node stats not reported");
                }
            }
        });
    }

    /// The cluster as this node sees it: its own latest record, and every
    /// other node's last report, by node id.
    pub async fn cluster(&self, broker: &dyn Broker) -> ClusterView {
        let mut nodes = vec![NodeView {
            record: self.record(),
            age_ms: 0,
            live: true,
        }];
        let error = match broker.node_reports(FORGET_AFTER).await {
            Ok(reports) => {
                nodes.extend(reports.iter().filter_map(|r| self.view(r)));
                None
            }
            Err(e) => Some(e.to_string()),
        };
        nodes.sort_by(|a, b| a.record.node.cmp(&b.record.node));
        ClusterView { nodes, error }
    }

    /// Another node's report as a view; `None` for this node's own and for
    /// a record that does not parse (a node of another version).
    fn view(&self, report: &NodeReport) -> Option<NodeView> {
        if report.node == *self.node {
            return None;
        }
        let record: NodeRecord = serde_json::from_slice(&report.record).ok()?;
        Some(NodeView {
            record,
            age_ms: report.age.as_millis() as u64,
            live: report.age <= LIVE_WITHIN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(connections: u64, published: u64) -> Reading {
        Reading {
            connections,
            rooms: 1,
            published,
            delivered: published * 2,
            draining: false,
        }
    }

    #[test]
    fn counters_become_rates_and_history_keeps_the_last_samples_oldest_first() {
        let stats = NodeStats::new(Arc::from("n"), "memory");
        let start = Instant::now();
        let first = stats.sample(reading(1, 10), start);
        assert_eq!(
            first.published_per_second, 0.0,
            "no rate without a previous sample"
        );
        let second = stats.sample(reading(2, 40), start + Duration::from_secs(2));
        assert_eq!(second.published_per_second, 15.0);
        assert_eq!(second.delivered_per_second, 30.0);
        assert_eq!(second.history.connections, [1, 2]);
        for i in 0..SAMPLES as u64 {
            stats.sample(reading(100 + i, 40), start + Duration::from_secs(3 + i));
        }
        let record = stats.record();
        assert_eq!(record.history.connections.len(), SAMPLES);
        assert_eq!(record.history.connections[0], 100);
        assert_eq!(
            *record.history.connections.last().unwrap(),
            100 + SAMPLES as u64 - 1
        );
        assert_eq!(record.connections, 100 + SAMPLES as u64 - 1);
    }

    #[test]
    fn another_nodes_report_is_live_while_young_and_this_nodes_own_is_skipped() {
        let stats = NodeStats::new(Arc::from("a"), "redis");
        let other = NodeRecord {
            node: "b".into(),
            connections: 7,
            ..NodeRecord::default()
        };
        let report = |node: &str, age_ms| NodeReport {
            node: node.into(),
            age: Duration::from_millis(age_ms),
            record: serde_json::to_vec(&other).unwrap(),
        };
        let young = stats.view(&report("b", 900)).unwrap();
        assert!(young.live);
        assert_eq!(young.record.connections, 7);
        assert!(!stats.view(&report("b", 10_000)).unwrap().live);
        assert!(stats.view(&report("a", 0)).is_none());
        let garbage = NodeReport {
            node: "c".into(),
            age: Duration::ZERO,
            record: b"not json".to_vec(),
        };
        assert!(stats.view(&garbage).is_none());
    }
}

//! Every node's stats record in one Redis hash (`rc:{nodes}:stats`), so
//! that any node can show the whole cluster (`/api/nodes`, the admin page).
//! Each node writes its record about once a second
//! ([`node_report.lua`](node_report.lua)); a reader gets every record with
//! its age ([`node_reports.lua`](node_reports.lua)). Ages are measured by
//! Redis's clock, which stamps each record as it is stored, so nodes whose
//! clocks disagree still see each other's true age. One key, one slot: on a
//! Redis Cluster it lives on one shard like any room's keys.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use roomcast_protocol::envelope::names;

use super::{connected, unavailable, value_bytes, RedisStats};
use crate::{BrokerError, NodeReport};

const REPORT_LUA: &str = include_str!("node_report.lua");
const REPORTS_LUA: &str = include_str!("node_reports.lua");

pub(super) struct NodeReports {
    client: Client,
    report: Script,
    reports: Script,
    stats: Arc<RedisStats>,
}

impl NodeReports {
    pub(super) fn new(client: Client, stats: Arc<RedisStats>) -> NodeReports {
        NodeReports {
            client,
            report: Script::from_lua(REPORT_LUA),
            reports: Script::from_lua(REPORTS_LUA),
            stats,
        }
    }

    pub(super) async fn write(
        &self,
        node: &str,
        record: Vec<u8>,
        forget_after: Duration,
    ) -> Result<(), BrokerError> {
        connected(&self.client, &self.stats)?;
        let args: Vec<Value> = vec![
            node.into(),
            Value::Bytes(record.into()),
            (forget_after.as_millis() as i64).into(),
        ];
        let _: i64 = self
            .report
            .evalsha_with_reload(&self.client, vec![names::NODE_STATS], args)
            .await
            .map_err(|e| unavailable(&self.stats, e))?;
        Ok(())
    }

    pub(super) async fn read(
        &self,
        forget_after: Duration,
    ) -> Result<Vec<NodeReport>, BrokerError> {
        connected(&self.client, &self.stats)?;
        let args: Vec<Value> = vec![(forget_after.as_millis() as i64).into()];
        let reply: Vec<Value> = self
            .reports
            .evalsha_with_reload(&self.client, vec![names::NODE_STATS], args)
            .await
            .map_err(|e| unavailable(&self.stats, e))?;
        let mut reports = Vec::with_capacity(reply.len() / 3);
        for triple in reply.chunks_exact(3) {
            let (Some(node), Some(age), Some(record)) = (
                triple[0].as_string(),
                triple[1].as_u64(),
                value_bytes(&triple[2]),
            ) else {
                continue;
            };
            reports.push(NodeReport {
                node,
                age: Duration::from_millis(age),
                record: record.to_vec(),
            });
        }
        Ok(reports)
    }
}

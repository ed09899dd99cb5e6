//! Reading a room's history from Redis ([`read.lua`](read.lua)): the room's
//! position and the entries after an offset, in one atomic script; reads of
//! one room coalesced; what a reader that asked from `since` may recover.
//! And the latest entries of a room for an operator ([`recent.lua`](recent.lua)).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use roomcast_protocol::envelope::{names, Envelope};
use roomcast_protocol::Since;
use tokio::sync::oneshot;

use super::{connected, new_epoch, unavailable, value_bytes, RedisBroker, RedisStats, META_TTL};
use crate::message::now_us;
use crate::{BrokerError, HistoryRead, Position, Recent, Recovery, Retention, RoomMessage};

/// Reads of rooms' history, coalesced per room. A resume storm asks for the
/// same rooms thousands of times at once; one task per room serves every
/// read queued while its previous read was in flight with one `read.lua`
/// call from the oldest offset asked (per epoch asked), and gives each caller
/// its own slice. Each read still starts after its caller asked (after the
/// member began buffering), which is what keeps recovery exact.
#[derive(Clone)]
pub(super) struct Reader {
    client: Client,
    script: Script,
    recent_script: Script,
    limits: Arc<Retention>,
    stats: Arc<RedisStats>,
    /// Reads waiting, per room; a room is here while its task runs.
    waiting: Arc<parking_lot::Mutex<HashMap<String, Vec<ReadWaiter>>>>,
}

struct ReadWaiter {
    since: Option<Since>,
    reply: oneshot::Sender<Result<HistoryRead, BrokerError>>,
}

const READ_LUA: &str = include_str!("read.lua");
const RECENT_LUA: &str = include_str!("recent.lua");

impl Reader {
    pub(super) fn new(client: Client, limits: Arc<Retention>, stats: Arc<RedisStats>) -> Reader {
        Reader {
            client,
            script: Script::from_lua(READ_LUA),
            recent_script: Script::from_lua(RECENT_LUA),
            limits,
            stats,
            waiting: Arc::default(),
        }
    }

    /// See [`connected`] (the command connection).
    pub(super) fn ensure_connected(&self) -> Result<(), BrokerError> {
        connected(&self.client, &self.stats)
    }

    pub(super) async fn read(
        &self,
        room: &str,
        since: Option<&Since>,
    ) -> Result<HistoryRead, BrokerError> {
        self.ensure_connected()?;
        let (reply, answer) = oneshot::channel();
        let waiter = ReadWaiter {
            since: since.cloned(),
            reply,
        };
        let start = {
            let mut waiting = self.waiting.lock();
            match waiting.get_mut(room) {
                Some(queue) => {
                    queue.push(waiter);
                    false
                }
                None => {
                    waiting.insert(room.to_string(), vec![waiter]);
                    true
                }
            }
        };
        if start {
            tokio::spawn(self.clone().run(room.to_string()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable(&self.stats, "history read abandoned")))
    }

    /// Serves the room's queued reads until none is left.
    async fn run(self, room: String) {
        loop {
            let batch = {
                let mut waiting = self.waiting.lock();
                let Some(queue) = waiting.get_mut(&room) else {
                    return;
                };
                if queue.is_empty() {
                    waiting.remove(&room);
                    return;
                }
                std::mem::take(queue)
            };
            self.serve(&room, batch).await;
        }
    }

    /// One read per epoch asked (usually one), from the oldest offset asked.
    async fn serve(&self, room: &str, mut batch: Vec<ReadWaiter>) {
        while !batch.is_empty() {
            let epoch = batch
                .iter()
                .find_map(|w| w.since.as_ref().map(|s| s.epoch.clone()));
            let (mine, rest): (Vec<ReadWaiter>, Vec<ReadWaiter>) =
                batch.into_iter().partition(|w| match &w.since {
                    Some(s) => epoch.as_deref() == Some(s.epoch.as_str()),
                    // Position-only reads ride along with the first group.
                    None => true,
                });
            batch = rest;
            let from = epoch.map(|epoch| Since {
                offset: mine
                    .iter()
                    .filter_map(|w| w.since.as_ref().map(|s| s.offset))
                    .min()
                    .unwrap_or(0),
                epoch,
            });
            match self.read_raw(room, from.as_ref()).await {
                Ok((position, raw)) => {
                    let messages = decode_all(raw);
                    for waiter in mine {
                        let recovery = waiter
                            .since
                            .as_ref()
                            .map(|s| recover(s, &position, &messages, self.limits.of(room).ttl));
                        let _ = waiter.reply.send(Ok(HistoryRead {
                            position: position.clone(),
                            recovery,
                        }));
                    }
                }
                Err(e) => {
                    for waiter in mine {
                        let _ = waiter.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Runs `read.lua`: the room's position, and the raw envelopes after
    /// `since` (only when the epoch matches).
    pub(super) async fn read_raw(
        &self,
        room: &str,
        since: Option<&Since>,
    ) -> Result<(Position, Vec<Vec<u8>>), BrokerError> {
        self.ensure_connected()?;
        self.stats.history_reads.fetch_add(1, Relaxed);
        let keys = vec![names::room_meta(room), names::room_history(room)];
        let (after, epoch) = match since {
            Some(s) => (s.offset as i64, s.epoch.clone()),
            None => (-1, String::new()),
        };
        let args: Vec<Value> = vec![
            new_epoch().into(),
            (META_TTL.as_millis() as i64).into(),
            after.into(),
            epoch.into(),
        ];
        let reply: Vec<Value> = self
            .script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| unavailable(&self.stats, e))?;
        self.position_and_entries("read.lua", reply)
    }

    /// Runs `recent.lua`: the room's position and its latest `limit`
    /// entries still within the history TTL, or `None` for a room Redis
    /// does not know. The stream is trimmed to about `history.size`
    /// entries; `limit` is at most that.
    pub(super) async fn recent(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<Recent>, BrokerError> {
        self.ensure_connected()?;
        let keys = vec![names::room_meta(room), names::room_history(room)];
        let reply: Vec<Value> = self
            .recent_script
            .evalsha_with_reload(&self.client, keys, vec![Value::from(limit as i64)])
            .await
            .map_err(|e| unavailable(&self.stats, e))?;
        if reply.is_empty() {
            return Ok(None);
        }
        let (position, raw) = self.position_and_entries("recent.lua", reply)?;
        let ttl = self.limits.of(room).ttl;
        let oldest_allowed = now_us().saturating_sub(ttl.as_micros() as u64);
        let mut messages = decode_all(raw);
        messages.retain(|m| m.published_at_us >= oldest_allowed);
        Ok(Some(Recent { position, messages }))
    }

    /// A script's `{epoch, offset, envelope...}` reply.
    fn position_and_entries(
        &self,
        script: &str,
        reply: Vec<Value>,
    ) -> Result<(Position, Vec<Vec<u8>>), BrokerError> {
        let mut items = reply.into_iter();
        let epoch = items
            .next()
            .and_then(|v| v.as_string())
            .ok_or_else(|| unavailable(&self.stats, format!("{script}: no epoch")))?;
        let offset = items
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(|| unavailable(&self.stats, format!("{script}: no offset")))?;
        let raw = items
            .filter_map(|v| value_bytes(&v).map(<[u8]>::to_vec))
            .collect();
        Ok((
            Position {
                offset,
                epoch: Arc::from(epoch),
            },
            raw,
        ))
    }
}

/// History entries decoded, in offset order. An undecodable entry is left
/// out (and logged): a read whose range holds it then comes up one message
/// short and is not recoverable, while reads sharing the same `read.lua`
/// call whose ranges start after it are served in full.
pub(super) fn decode_all(raw: Vec<Vec<u8>>) -> Vec<Arc<RoomMessage>> {
    let mut messages = Vec::with_capacity(raw.len());
    for bytes in raw {
        match Envelope::decode(&bytes) {
            Ok(env) => messages.push(RedisBroker::to_message(env)),
            Err(e) => tracing::error!(error = %e, "undecodable history entry left out"),
        }
    }
    messages
}

/// What a client that asked for the messages after `since` gets, from the
/// history read at `position` (`messages`: the entries after some offset at
/// or before `since.offset`, in order): all of them after `since.offset`, in
/// history and younger than `ttl`, or nothing.
pub(super) fn recover(
    since: &Since,
    position: &Position,
    messages: &[Arc<RoomMessage>],
    ttl: Duration,
) -> Recovery {
    if since.epoch != *position.epoch || since.offset > position.offset {
        return Recovery::NotRecoverable;
    }
    let missing = position.offset - since.offset;
    if missing == 0 {
        return Recovery::Recovered(Vec::new());
    }
    let mine = &messages[messages.partition_point(|m| m.offset <= since.offset)..];
    let oldest_allowed = now_us().saturating_sub(ttl.as_micros() as u64);
    let complete = mine.len() as u64 == missing
        && mine
            .first()
            .is_some_and(|m| m.offset == since.offset + 1 && m.published_at_us >= oldest_allowed);
    if complete {
        Recovery::Recovered(mine.to_vec())
    } else {
        Recovery::NotRecoverable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::envelope::Kind;

    fn entry(offset: u64) -> Vec<u8> {
        let mut env = Envelope::new(Kind::Message, "r", "node-a", now_us());
        env.offset = offset;
        env.epoch = "0123456789abcdef".into();
        env.data = Some(serde_json::json!({ "n": offset }));
        env.encode().unwrap()
    }

    #[test]
    fn an_undecodable_entry_spoils_only_the_reads_whose_range_holds_it() {
        // One shared read from offset 0: entries 1..=5, the second corrupt.
        let raw = vec![
            entry(1),
            b"\xc1 not an envelope".to_vec(),
            entry(3),
            entry(4),
            entry(5),
        ];
        let messages = decode_all(raw);
        assert_eq!(
            messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [1, 3, 4, 5]
        );
        let position = Position {
            offset: 5,
            epoch: Arc::from("0123456789abcdef"),
        };
        let since = |offset| Since {
            offset,
            epoch: "0123456789abcdef".into(),
        };
        let ttl = Duration::from_secs(60);
        // From 2 on, the corrupt entry is behind the reader: served in full.
        for from in [2, 3] {
            match recover(&since(from), &position, &messages, ttl) {
                Recovery::Recovered(got) => assert_eq!(
                    got.iter().map(|m| m.offset).collect::<Vec<_>>(),
                    ((from + 1)..=5).collect::<Vec<_>>()
                ),
                Recovery::NotRecoverable => panic!("since {from}: not recoverable"),
            }
        }
        // Ranges that hold offset 2 cannot be served whole: not recoverable,
        // never a gap.
        for from in [0, 1] {
            assert!(matches!(
                recover(&since(from), &position, &messages, ttl),
                Recovery::NotRecoverable
            ));
        }
    }
}

//! A worker process: `roomcast-bench worker`, started by the coordinator.
//!
//! It reads its [`WorkerPlan`] from the first line of standard input (the
//! coordinator sends nothing else before the worker says it is ready, so no
//! buffered reader can swallow a command), opens its members and publishers,
//! answers with [`WorkerMsg::Ready`], then follows [`Command`]s, one JSON line
//! each, until `exit`, the end of its input (the coordinator is gone) or its
//! own time limit. Every 250 ms it writes a [`Progress`] line.
//!
//! A *member* joins one room and reads: for each benchmark message it
//! records latency (when published inside the measurement window) and
//! follows the (publisher, sequence) stream to count what was missed or
//! received twice, and roomcast's offsets likewise. With a failover plan a
//! member whose connection ends comes back on another node: roomcast members
//! resume their session with their room's offset, Socket.IO members connect
//! and join again. A *publisher* joins its rooms and, during a round,
//! publishes to them in turn at its rate.
//!
//! All counters live in one `State` behind a mutex: each message takes the
//! lock once, briefly (the default runtime has one thread, so it is never
//! contended), and a report walks every member once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use roomcast_client::Backoff;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::load::{
    padding, payload, Conn, Connector, Event, Protocol, ResumeState, RoomPosition, Stamp,
    EXCHANGE_PUBLISHER,
};
use crate::net;
use crate::spec::{
    Command, Progress, PublisherPlan, Ready, ResumeTally, RoomTally, Round, WorkerMsg, WorkerPlan,
    WorkerReport,
};
use crate::stats;
use crate::system::{now_us, rss_kib};

/// Attempts at setting a connection up before it counts as failed.
const SETUP_ATTEMPTS: u32 = 3;
/// Distinct error messages kept per report.
const MAX_ERROR_KINDS: usize = 20;

/// Entry point of `roomcast-bench worker`; returns the exit code.
pub fn main() -> i32 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("roomcast-bench worker: reading the plan: {e}");
        return 2;
    }
    let plan: WorkerPlan = match serde_json::from_str(&line) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("roomcast-bench worker: bad plan: {e}");
            return 2;
        }
    };
    // Up to 15,000 connections a worker: lift a 1,024 soft limit.
    roomcast_service::raise_open_files_limit();
    let mut builder = if plan.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(plan.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-bench worker: runtime: {e}");
            return 2;
        }
    };
    let worker = plan.worker;
    let result = runtime.block_on(run(plan));
    // Connection tasks are parked on their sockets: leave without them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("roomcast-bench worker {worker}: {e:#}");
            1
        }
    }
}

/// Writes one message line for the coordinator.
fn emit(msg: &WorkerMsg) {
    match serde_json::to_string(msg) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("roomcast-bench worker: encoding a message: {e}"),
    }
}

/// What the coordinator and the tasks share.
struct Shared {
    plan: WorkerPlan,
    connector: Connector,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.plan.connect_timeout_ms)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    SettingUp,
    Up,
    Down,
    Dead,
    Failed,
}

/// One member's counters.
struct MemberState {
    room: u32,
    status: Status,
    streams: Vec<StreamPos>,
    received: u64,
    duplicates: u64,
    gaps: u64,
    reordered: u64,
    last_offset: Option<u64>,
    offset_gaps: u64,
    offset_duplicates: u64,
}

/// Where a member stands in one publisher's stream.
struct StreamPos {
    publisher: u32,
    /// The next sequence number expected.
    next: u64,
    /// Sequence numbers skipped so far (at most `MAX_MISSING`): one that
    /// arrives late is out of order, not a duplicate.
    missing: Vec<u64>,
}

/// Skipped sequence numbers remembered per stream.
const MAX_MISSING: usize = 4096;

struct State {
    members: Vec<MemberState>,
    /// The measurement window of the current round (µs since the epoch).
    window: Option<(u64, u64)>,
    latency: Histogram<u64>,
    delivered: u64,
    delivered_in_window: u64,
    published: BTreeMap<u32, u64>,
    publishers_dead: u64,
    server_errors: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    mark_us: Option<u64>,
    resume: ResumeTally,
    back_after: Histogram<u64>,
    /// Connections lost so far (never reset, unlike `resume`).
    went_down: u64,
}

impl State {
    fn new(members: Vec<MemberState>) -> State {
        State {
            members,
            window: None,
            latency: stats::histogram(),
            delivered: 0,
            delivered_in_window: 0,
            published: BTreeMap::new(),
            publishers_dead: 0,
            server_errors: BTreeMap::new(),
            errors: BTreeMap::new(),
            mark_us: None,
            resume: ResumeTally::default(),
            back_after: stats::histogram(),
            went_down: 0,
        }
    }

    fn on_message(&mut self, member: usize, stamp: Option<Stamp>, offset: Option<u64>, now: u64) {
        let Some(stamp) = stamp else { return };
        if stamp.p == EXCHANGE_PUBLISHER {
            return;
        }
        self.delivered += 1;
        if let Some((from, until)) = self.window {
            if (from..until).contains(&now) {
                self.delivered_in_window += 1;
            }
            if (from..until).contains(&stamp.t) {
                stats::record(&mut self.latency, now.saturating_sub(stamp.t));
            }
        }
        let m = &mut self.members[member];
        let stream = match m.streams.iter().position(|x| x.publisher == stamp.p) {
            Some(i) => &mut m.streams[i],
            None => {
                m.streams.push(StreamPos {
                    publisher: stamp.p,
                    next: 0,
                    missing: Vec::new(),
                });
                m.streams.last_mut().expect("just pushed")
            }
        };
        if stamp.s >= stream.next {
            let skipped = stamp.s - stream.next;
            m.gaps += skipped;
            let room = MAX_MISSING.saturating_sub(stream.missing.len()) as u64;
            stream
                .missing
                .extend(stream.next..stream.next + skipped.min(room));
            stream.next = stamp.s + 1;
            m.received += 1;
        } else if let Some(i) = stream.missing.iter().position(|&x| x == stamp.s) {
            stream.missing.swap_remove(i);
            m.received += 1;
            m.reordered += 1;
        } else {
            m.duplicates += 1;
        }
        if let Some(offset) = offset {
            match m.last_offset {
                Some(last) if offset <= last => m.offset_duplicates += 1,
                Some(last) => {
                    m.offset_gaps += offset - last - 1;
                    m.last_offset = Some(offset);
                }
                None => m.last_offset = Some(offset),
            }
        }
    }

    fn note_error(&mut self, error: &anyhow::Error) {
        // Digits vary (ports, addresses, ids): group errors without them.
        let mut key = String::new();
        for c in format!("{error:#}").chars().take(160) {
            if c.is_ascii_digit() {
                if !key.ends_with('#') {
                    key.push('#');
                }
            } else {
                key.push(c);
            }
        }
        if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&key) {
            *self.errors.entry(key).or_default() += 1;
        }
    }

    fn set_status(&mut self, member: usize, status: Status) {
        self.members[member].status = status;
    }

    fn went_down(&mut self, member: usize) {
        self.members[member].status = Status::Down;
        self.resume.went_down += 1;
        self.went_down += 1;
    }

    fn came_back(&mut self, member: usize, now: u64) {
        self.members[member].status = Status::Up;
        self.resume.came_back += 1;
        if let Some(mark) = self.mark_us {
            stats::record(&mut self.back_after, now.saturating_sub(mark));
        }
    }

    fn progress(&self, worker: usize) -> Progress {
        let mut p = Progress {
            worker,
            delivered: self.delivered,
            went_down: self.went_down,
            ..Progress::default()
        };
        for m in &self.members {
            match m.status {
                Status::Up => p.members_up += 1,
                Status::Down => p.members_down += 1,
                Status::Dead => p.members_dead += 1,
                Status::SettingUp | Status::Failed => {}
            }
        }
        p
    }

    /// Everything since the last report; the counters start again from zero
    /// (the streams' positions and offsets carry on).
    fn take_report(&mut self, worker: usize) -> WorkerReport {
        let mut rooms: BTreeMap<u32, RoomTally> = BTreeMap::new();
        for m in &mut self.members {
            if m.status == Status::Failed {
                continue;
            }
            let t = rooms.entry(m.room).or_insert_with(|| RoomTally {
                room: m.room,
                ..RoomTally::default()
            });
            if m.status == Status::Up {
                t.members += 1;
                t.received += m.received;
                t.duplicates += m.duplicates;
                t.gaps += m.gaps;
                t.reordered += m.reordered;
                t.offset_gaps += m.offset_gaps;
                t.offset_duplicates += m.offset_duplicates;
            } else {
                t.dead += 1;
            }
            m.received = 0;
            m.duplicates = 0;
            m.gaps = 0;
            m.reordered = 0;
            m.offset_gaps = 0;
            m.offset_duplicates = 0;
        }
        let mut resume = std::mem::take(&mut self.resume);
        resume.back_after_us = stats::to_pairs(&self.back_after);
        self.back_after.reset();
        let report = WorkerReport {
            worker,
            rooms: rooms.into_values().collect(),
            published: std::mem::take(&mut self.published).into_iter().collect(),
            publishers_dead: self.publishers_dead,
            latency_us: stats::to_pairs(&self.latency),
            delivered_in_window: self.delivered_in_window,
            server_errors: std::mem::take(&mut self.server_errors)
                .into_iter()
                .collect(),
            errors: std::mem::take(&mut self.errors).into_iter().collect(),
            resume,
            rss_kib: rss_kib(std::process::id()).unwrap_or(0),
        };
        self.latency.reset();
        self.delivered_in_window = 0;
        report
    }
}

/// What a task says when its set-up is over.
enum SetupDone {
    Member(Result<()>),
    Publisher(Result<()>),
}

async fn run(plan: WorkerPlan) -> Result<()> {
    let sources = net::worker_sources(plan.worker);
    let mut members = Vec::new();
    let mut homes = Vec::new();
    for group in &plan.members {
        if group.node >= plan.nodes.len() {
            bail!(
                "member group names node {}, plan has {}",
                group.node,
                plan.nodes.len()
            );
        }
        for _ in 0..group.count {
            members.push(MemberState {
                room: group.room,
                status: Status::SettingUp,
                streams: Vec::new(),
                received: 0,
                duplicates: 0,
                gaps: 0,
                reordered: 0,
                last_offset: None,
                offset_gaps: 0,
                offset_duplicates: 0,
            });
            homes.push(group.node);
        }
    }
    let connector = Connector::new(
        plan.protocol,
        plan.deflate,
        Duration::from_millis(plan.connect_timeout_ms),
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(members)),
        connector,
        plan,
    });
    let plan = &shared.plan;
    let deadline = tokio::time::sleep(Duration::from_secs(plan.max_secs));
    tokio::pin!(deadline);

    // Set up every connection, a bounded number at a time.
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (round_tx, round_rx) = watch::channel::<Option<Round>>(None);
    let mut setups = 0usize;
    for (i, &home) in homes.iter().enumerate() {
        let member = Member {
            shared: shared.clone(),
            index: i,
            room: shared.state().members[i].room,
            source: sources[i % sources.len()],
            conn: None,
            resume: None,
            position: RoomPosition::default(),
            reconnect_after: None,
        };
        tokio::spawn(member.run(home, permits.clone(), done_tx.clone()));
        setups += 1;
    }
    for (i, p) in plan.publishers.iter().enumerate() {
        let publisher = Publisher {
            shared: shared.clone(),
            plan: p.clone(),
            source: sources[(homes.len() + i) % sources.len()],
        };
        tokio::spawn(publisher.run(permits.clone(), done_tx.clone(), round_rx.clone()));
        setups += 1;
    }
    drop(done_tx);
    let mut ready = Ready {
        worker: plan.worker,
        ..Ready::default()
    };
    for _ in 0..setups {
        let done = tokio::select! {
            done = done_rx.recv() => done.ok_or_else(|| anyhow!("set-up tasks ended early"))?,
            _ = &mut deadline => bail!("set-up did not finish within {} s", plan.max_secs),
        };
        match done {
            SetupDone::Member(Ok(())) => ready.members_ok += 1,
            SetupDone::Member(Err(_)) => ready.members_failed += 1,
            SetupDone::Publisher(Ok(())) => ready.publishers_ok += 1,
            SetupDone::Publisher(Err(_)) => ready.publishers_failed += 1,
        }
    }
    ready.errors = shared
        .state()
        .errors
        .iter()
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    ready.rss_kib = rss_kib(std::process::id()).unwrap_or(0);
    emit(&WorkerMsg::Ready(ready));

    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let progress = shared.state().progress(shared.plan.worker);
                emit(&WorkerMsg::Progress(progress));
            }
        })
    };

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.context("reading commands")?,
            _ = &mut deadline => {
                eprintln!("roomcast-bench worker {}: time limit ({} s) reached", plan.worker, plan.max_secs);
                break;
            }
        };
        let Some(line) = line else { break };
        match serde_json::from_str::<Command>(&line).context("bad command")? {
            Command::Round(round) => {
                shared.state().window = Some((round.measure_from_us, round.measure_until_us));
                round_tx.send_replace(Some(round));
            }
            Command::Mark { at_us } => shared.state().mark_us = Some(at_us),
            Command::Report => {
                let report = shared.state().take_report(plan.worker);
                emit(&WorkerMsg::Report(report));
            }
            Command::Exit => break,
        }
    }
    ticker.abort();
    Ok(())
}

/// Sleeps until `at_us` (µs since the epoch).
async fn sleep_until_us(at_us: u64) {
    let now = now_us();
    if at_us > now {
        tokio::time::sleep(Duration::from_micros(at_us - now)).await;
    }
}

/// One member connection and what it needs to come back.
struct Member {
    shared: Arc<Shared>,
    index: usize,
    room: u32,
    source: Ipv4Addr,
    conn: Option<Conn>,
    /// roomcast: the session to resume.
    resume: Option<ResumeState>,
    /// roomcast: the room's position (last offset received, epoch).
    position: RoomPosition,
    /// A drain notice's delay before reconnecting.
    reconnect_after: Option<Duration>,
}

impl Member {
    async fn run(
        mut self,
        home: usize,
        permits: Arc<Semaphore>,
        done: mpsc::UnboundedSender<SetupDone>,
    ) {
        let setup = {
            let _permit = permits.acquire().await;
            self.set_up(home).await
        };
        match setup {
            Ok(()) => {
                self.shared.state().set_status(self.index, Status::Up);
                let _ = done.send(SetupDone::Member(Ok(())));
            }
            Err(e) => {
                let mut state = self.shared.state();
                state.set_status(self.index, Status::Failed);
                state.note_error(&e);
                drop(state);
                let _ = done.send(SetupDone::Member(Err(e)));
                return;
            }
        }
        // The connection's life goes on in a task of its own, so the
        // set-up's state (handshake futures) is freed: about 1.9 KB of task
        // per idle member instead of 7.7 KB.
        tokio::spawn(self.read_loop());
    }

    async fn set_up(&mut self, home: usize) -> Result<()> {
        let mut last = anyhow!("no attempt");
        for attempt in 0..SETUP_ATTEMPTS {
            match self.try_set_up(home).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        Err(last)
    }

    async fn try_set_up(&mut self, home: usize) -> Result<()> {
        let shared = self.shared.clone();
        let node = shared.plan.nodes[home];
        let (mut conn, opened) = shared.connector.open(node, self.source, None).await?;
        let joined = tokio::time::timeout(shared.join_timeout(), conn.join(self.room, None))
            .await
            .map_err(|_| anyhow!("no join answer in time"))??;
        if let Some(bytes) = shared.plan.exchange_bytes {
            self.exchange(&mut conn, bytes).await?;
        }
        self.position = joined.position;
        if shared.plan.protocol == Protocol::Roomcast {
            self.resume = Some(ResumeState {
                session: opened.session,
                token: opened.resume_token,
                rooms: Vec::new(),
            });
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Publishes one message to the member's room and waits for its own copy.
    async fn exchange(&self, conn: &mut Conn, bytes: usize) -> Result<()> {
        let seq = self.index as u64;
        let stamp = Stamp {
            t: now_us(),
            p: EXCHANGE_PUBLISHER,
            s: seq,
        };
        conn.publish(self.room, &payload(stamp, &padding(bytes)))
            .await?;
        let wait = async {
            loop {
                match conn.next_event().await? {
                    Event::Message { stamp: Some(s), .. }
                        if s.p == EXCHANGE_PUBLISHER && s.s == seq =>
                    {
                        return Ok(())
                    }
                    Event::Closed(code) => bail!("closed ({code:?}) during the exchange"),
                    Event::ServerError(code) => bail!("server error {code} during the exchange"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(self.shared.join_timeout(), wait)
            .await
            .map_err(|_| anyhow!("own message not back in time"))?
    }

    async fn read_loop(mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let event = conn.next_event().await;
            let now = now_us();
            match event {
                Ok(Event::Message {
                    room,
                    stamp,
                    offset,
                }) => {
                    if let Some(offset) = offset.filter(|_| room == self.room) {
                        self.position.offset = self.position.offset.max(offset);
                    }
                    self.shared
                        .state()
                        .on_message(self.index, stamp, offset, now);
                }
                Ok(Event::Reconnect { after_ms }) => {
                    self.reconnect_after = Some(Duration::from_millis(after_ms));
                }
                Ok(Event::ServerError(code)) => {
                    *self.shared.state().server_errors.entry(code).or_default() += 1;
                }
                Ok(Event::Other) => {}
                Ok(Event::Closed(_)) | Err(_) => {
                    self.conn = None;
                    if self.shared.plan.failover.is_none() {
                        let mut state = self.shared.state();
                        state.set_status(self.index, Status::Dead);
                        state.note_error(&anyhow!("member connection lost ({event:?})"));
                        return;
                    }
                    self.shared.state().went_down(self.index);
                    if !Box::pin(self.come_back()).await {
                        self.shared.state().set_status(self.index, Status::Dead);
                        return;
                    }
                }
            }
        }
    }

    /// Reconnects to the failover nodes with backoff until it is back or
    /// gives up.
    async fn come_back(&mut self) -> bool {
        let Some(failover) = self.shared.plan.failover.clone() else {
            return false;
        };
        let backoff = Backoff {
            base: Duration::from_millis(failover.backoff_base_ms),
            cap: Duration::from_millis(failover.backoff_cap_ms),
            max_attempts: None,
        };
        let give_up = Instant::now() + Duration::from_secs(failover.give_up_secs);
        let mut attempt = 0u32;
        loop {
            let wait = self
                .reconnect_after
                .take()
                .unwrap_or_else(|| backoff.delay(attempt));
            tokio::time::sleep(wait).await;
            let node = failover.nodes[attempt as usize % failover.nodes.len().max(1)];
            match self.reconnect(self.shared.plan.nodes[node]).await {
                Ok(()) => {
                    self.shared.state().came_back(self.index, now_us());
                    return true;
                }
                Err(e) => {
                    let mut state = self.shared.state();
                    state.resume.failed_attempts += 1;
                    state.note_error(&e);
                }
            }
            attempt += 1;
            if Instant::now() >= give_up {
                return false;
            }
        }
    }

    async fn reconnect(&mut self, node: std::net::SocketAddr) -> Result<()> {
        let shared = self.shared.clone();
        let resume = self.resume.as_ref().map(|r| ResumeState {
            rooms: vec![self.position.clone()],
            ..r.clone()
        });
        let (mut conn, opened) = shared
            .connector
            .open(node, self.source, resume.as_ref())
            .await?;
        if shared.plan.protocol == Protocol::Roomcast {
            // A resumed session lists the rooms it restored; one left out
            // (the node could not read its history at that moment) is
            // joined again with `since`, as the client library does.
            let restored = opened
                .rooms
                .iter()
                .find(|(p, _)| p.room == self.room)
                .map(|(_, rec)| *rec);
            let recovered = if let (true, Some(recovered)) = (opened.resumed, restored) {
                recovered
            } else {
                let joined = tokio::time::timeout(
                    shared.join_timeout(),
                    conn.join(self.room, Some(&self.position)),
                )
                .await
                .map_err(|_| anyhow!("no join answer in time"))??;
                let recovered = joined.recovered.unwrap_or(false);
                if !recovered {
                    self.position = joined.position;
                }
                recovered
            };
            let mut state = shared.state();
            if opened.resumed {
                state.resume.sessions_resumed += 1;
            } else {
                state.resume.fresh_sessions += 1;
            }
            if recovered {
                state.resume.rooms_recovered += 1;
            } else {
                state.resume.rooms_not_recovered += 1;
                // Nothing was replayed: offsets start again from here.
                state.members[self.index].last_offset = None;
            }
            drop(state);
            self.resume = Some(ResumeState {
                session: opened.session,
                token: opened.resume_token,
                rooms: Vec::new(),
            });
        } else {
            tokio::time::timeout(shared.join_timeout(), conn.join(self.room, None))
                .await
                .map_err(|_| anyhow!("no join answer in time"))??;
        }
        self.conn = Some(conn);
        Ok(())
    }
}

/// One publishing connection.
struct Publisher {
    shared: Arc<Shared>,
    plan: PublisherPlan,
    source: Ipv4Addr,
}

impl Publisher {
    async fn run(
        self,
        permits: Arc<Semaphore>,
        done: mpsc::UnboundedSender<SetupDone>,
        mut rounds: watch::Receiver<Option<Round>>,
    ) {
        let setup = {
            let _permit = permits.acquire().await;
            self.set_up().await
        };
        let mut conn = match setup {
            Ok(conn) => {
                let _ = done.send(SetupDone::Publisher(Ok(())));
                conn
            }
            Err(e) => {
                self.shared.state().note_error(&e);
                let _ = done.send(SetupDone::Publisher(Err(e)));
                return;
            }
        };
        if self.plan.rooms.is_empty() {
            return;
        }
        let pad = padding(self.shared.plan.payload_bytes);
        let mut seqs = vec![0u64; self.plan.rooms.len()];
        let mut round: Option<Round> = None;
        let mut sent = 0u64; // in this round
        loop {
            let due = round.and_then(|r| due_at(&r, sent, self.plan.phase));
            tokio::select! {
                changed = rounds.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    round = *rounds.borrow_and_update();
                    sent = 0;
                }
                event = conn.next_event() => match event {
                    Ok(Event::Closed(_)) | Err(_) => {
                        let mut state = self.shared.state();
                        state.publishers_dead += 1;
                        state.note_error(&anyhow!("publisher connection lost ({event:?})"));
                        return;
                    }
                    Ok(Event::ServerError(code)) => {
                        *self.shared.state().server_errors.entry(code).or_default() += 1;
                    }
                    Ok(_) => {}
                },
                _ = sleep_until_us(due.unwrap_or(0)), if due.is_some() => {
                    let Some(r) = round else { continue };
                    // Everything due by now (a late wake-up sends a burst).
                    let now = now_us();
                    while due_at(&r, sent, self.plan.phase).is_some_and(|at| at <= now) {
                        let i = (sent % seqs.len() as u64) as usize;
                        let room = self.plan.rooms[i];
                        let stamp = Stamp { t: now_us(), p: self.plan.id, s: seqs[i] };
                        if let Err(e) = conn.publish(room, &payload(stamp, &pad)).await {
                            let mut state = self.shared.state();
                            state.publishers_dead += 1;
                            state.note_error(&e.context("publish"));
                            return;
                        }
                        seqs[i] += 1;
                        sent += 1;
                        *self.shared.state().published.entry(room).or_default() += 1;
                    }
                }
            }
        }
    }

    async fn set_up(&self) -> Result<Conn> {
        let shared = &self.shared;
        let node = *shared
            .plan
            .nodes
            .get(self.plan.node)
            .ok_or_else(|| anyhow!("publisher names node {}", self.plan.node))?;
        let mut last = anyhow!("no attempt");
        for attempt in 0..SETUP_ATTEMPTS {
            let attempt_result = async {
                let (mut conn, _) = shared.connector.open(node, self.source, None).await?;
                for &room in &self.plan.rooms {
                    tokio::time::timeout(shared.join_timeout(), conn.join(room, None))
                        .await
                        .map_err(|_| anyhow!("no join answer in time"))??;
                }
                Ok::<_, anyhow::Error>(conn)
            }
            .await;
            match attempt_result {
                Ok(conn) => return Ok(conn),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        Err(last)
    }
}

/// When message number `sent` of a round is due (µs), or `None` once the
/// round is over or has no rate. `phase` shifts the publisher's schedule by
/// that fraction of its period.
fn due_at(round: &Round, sent: u64, phase: f64) -> Option<u64> {
    if round.rate_per_publisher <= 0.0 {
        return None;
    }
    let at = round.start_us + ((sent as f64 + phase) * 1e6 / round.rate_per_publisher) as u64;
    (at < round.until_us).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(room: u32) -> MemberState {
        MemberState {
            room,
            status: Status::Up,
            streams: Vec::new(),
            received: 0,
            duplicates: 0,
            gaps: 0,
            reordered: 0,
            last_offset: None,
            offset_gaps: 0,
            offset_duplicates: 0,
        }
    }

    fn stamp(p: u32, s: u64) -> Option<Stamp> {
        Some(Stamp { t: 1, p, s })
    }

    #[test]
    fn streams_count_gaps_and_duplicates() {
        let mut state = State::new(vec![member(0)]);
        for (p, s, offset) in [
            (1, 0, 1),
            (1, 1, 2),
            (2, 0, 3),
            (1, 3, 5),
            (1, 3, 5),
            (2, 1, 6),
        ] {
            state.on_message(0, stamp(p, s), Some(offset), 10);
        }
        let report = state.take_report(0);
        let room = &report.rooms[0];
        assert_eq!(room.members, 1);
        assert_eq!(room.received, 5);
        assert_eq!(room.gaps, 1);
        assert_eq!(room.duplicates, 1);
        assert_eq!(room.offset_gaps, 1);
        assert_eq!(room.offset_duplicates, 1);
        // Counters restart, positions carry on.
        state.on_message(0, stamp(1, 4), Some(7), 10);
        let report = state.take_report(0);
        assert_eq!(report.rooms[0].received, 1);
        assert_eq!(report.rooms[0].gaps, 0);
        assert_eq!(report.rooms[0].offset_gaps, 0);
    }

    #[test]
    fn late_messages_are_out_of_order_not_duplicates() {
        let mut state = State::new(vec![member(0)]);
        for s in [0, 2, 1, 3, 1] {
            state.on_message(0, stamp(1, s), None, 10);
        }
        let room = &state.take_report(0).rooms[0];
        assert_eq!(room.received, 4);
        assert_eq!(room.reordered, 1);
        assert_eq!(room.duplicates, 1);
    }

    #[test]
    fn exchange_messages_and_dead_members_are_not_counted() {
        let mut state = State::new(vec![member(0), member(0)]);
        state.on_message(0, stamp(EXCHANGE_PUBLISHER, 4), Some(1), 10);
        state.on_message(1, stamp(1, 0), None, 10);
        state.set_status(1, Status::Dead);
        let report = state.take_report(0);
        assert_eq!(report.rooms[0].members, 1);
        assert_eq!(report.rooms[0].dead, 1);
        assert_eq!(report.rooms[0].received, 0);
    }

    #[test]
    fn the_window_decides_what_latency_is_recorded() {
        let mut state = State::new(vec![member(0)]);
        state.window = Some((100, 200));
        state.on_message(0, Some(Stamp { t: 50, p: 1, s: 0 }), None, 150);
        state.on_message(0, Some(Stamp { t: 120, p: 1, s: 1 }), None, 170);
        state.on_message(0, Some(Stamp { t: 190, p: 1, s: 2 }), None, 260);
        let report = state.take_report(0);
        assert_eq!(report.delivered_in_window, 2);
        let recorded: u64 = report.latency_us.iter().map(|p| p.1).sum();
        assert_eq!(recorded, 2);
    }

    #[test]
    fn rounds_schedule_messages_evenly() {
        let r = Round {
            rate_per_publisher: 10.0,
            start_us: 1_000_000,
            until_us: 2_000_000,
            measure_from_us: 0,
            measure_until_us: 0,
        };
        assert_eq!(due_at(&r, 0, 0.0), Some(1_000_000));
        assert_eq!(due_at(&r, 3, 0.0), Some(1_300_000));
        assert_eq!(due_at(&r, 10, 0.0), None);
        // A publisher at phase 1/4 sends a quarter period later.
        assert_eq!(due_at(&r, 0, 0.25), Some(1_025_000));
        assert_eq!(due_at(&r, 3, 0.25), Some(1_325_000));
        assert_eq!(due_at(&r, 9, 0.25), Some(1_925_000));
    }
}

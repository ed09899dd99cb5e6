use super::*;

const LEASE: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(15);

/// A state whose rebuild window is over (`t0 + 1 min` is "now").
fn settled() -> (State, Instant) {
    let t0 = Instant::now();
    (State::new(t0, WINDOW), t0 + Duration::from_secs(60))
}

fn sync(
    state: &mut State,
    node: &str,
    inc: &str,
    full: bool,
    ops: Vec<Op>,
    now: Instant,
) -> (SyncOutcome, Vec<Event>) {
    let mut events = Vec::new();
    let req = SyncRequest {
        incarnation: inc.into(),
        lease_ms: None,
        full,
        seq: None,
        ops,
    };
    let outcome = state.sync(node, req, LEASE, now, &mut events);
    (outcome, events)
}

/// The presence events (joins and leaves) only.
fn names(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e, Event::Join { .. } | Event::Leave { .. }))
        .map(describe)
        .collect()
}

/// Every event, in order.
fn all(events: &[Event]) -> Vec<String> {
    events.iter().map(describe).collect()
}

fn describe(event: &Event) -> String {
    match event {
        Event::Join { room, member } => format!("join {room} {}", member.session),
        Event::Leave { room, member } => format!("leave {room} {}", member.session),
        Event::Occupied { room } => format!("occupied {room}"),
        Event::Vacated { room } => format!("vacated {room}"),
        Event::SessionEnd { member, reason } => {
            format!("end {} {reason:?}", member.session)
        }
    }
}

fn sessions_in(state: &State, room: &str) -> Vec<String> {
    state.members(room).into_iter().map(|m| m.session).collect()
}

/// Node `a` (incarnation `a1`) known, with s1 (alice) in lobby.
fn with_alice_in_lobby() -> (State, Instant) {
    let (mut state, now) = settled();
    sync(&mut state, "a", "a1", true, vec![], now);
    let (out, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now,
    );
    assert_eq!(out.applied, 2);
    assert_eq!(names(&events), ["join lobby s1"]);
    (state, now)
}

#[test]
fn a_join_emits_once_and_a_repeated_join_emits_nothing() {
    let (mut state, now) = with_alice_in_lobby();
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::join("s1", "lobby")],
        now,
    );
    assert!(events.is_empty());
    assert_eq!(sessions_in(&state, "lobby"), ["s1"]);
}

#[test]
fn leave_and_disconnect_emit_leaves_and_forget() {
    let (mut state, now) = with_alice_in_lobby();
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![
            Op::join("s1", "kitchen"),
            Op::leave("s1", "lobby"),
            Op::leave("s1", "lobby"),
            Op::disconnect("s1"),
        ],
        now,
    );
    assert_eq!(
        names(&events),
        ["join kitchen s1", "leave lobby s1", "leave kitchen s1"]
    );
    assert_eq!(state.counts().sessions, 0);
    assert_eq!(state.counts().rooms, 0);
    assert!(state.lookup(&["alice".into()], &[]).is_empty());
}

#[test]
fn an_unknown_node_or_incarnation_is_asked_for_a_full_sync() {
    let (mut state, now) = settled();
    let (out, _) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s", "u", None)],
        now,
    );
    assert!(out.need_full);
    assert_eq!(
        state.counts().sessions,
        0,
        "ops of an unknown node are not applied"
    );
    sync(&mut state, "a", "a1", true, vec![], now);
    let (out, _) = sync(&mut state, "a", "a2", false, vec![], now);
    assert!(out.need_full);
}

#[test]
fn a_handoff_taken_within_grace_by_another_node_causes_no_event() {
    let (mut state, now) = with_alice_in_lobby();
    sync(&mut state, "b", "b1", true, vec![], now);
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::handoff("s1", 5_000)],
        now,
    );
    assert!(events.is_empty());
    // The draining node's own clean-up ops are ignored during grace.
    let (out, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::leave("s1", "lobby"), Op::disconnect("s1")],
        now,
    );
    assert!(events.is_empty());
    assert_eq!(out.ignored, 2);
    assert_eq!(
        sessions_in(&state, "lobby"),
        ["s1"],
        "still a member in grace"
    );
    assert!(
        state.lookup(&[], &["s1".into()]).is_empty(),
        "no connection in grace"
    );

    let later = now + Duration::from_secs(2);
    let (_, events) = sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        later,
    );
    assert!(events.is_empty(), "{events:?}");
    let mut events = Vec::new();
    state.sweep(later + Duration::from_secs(10), &mut events);
    // Node a's lease (15 s from `now`) has not expired yet either.
    assert!(events.is_empty());
    assert_eq!(
        state.lookup(&["alice".into()], &[]),
        [Owner {
            session: "s1".into(),
            user: "alice".into(),
            node: "b".into()
        }]
    );
}

#[test]
fn a_handoff_not_taken_in_time_leaves_its_rooms() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::handoff("s1", 1_000)],
        now,
    );
    let mut events = Vec::new();
    let sweep = state.sweep(now + Duration::from_millis(999), &mut events);
    assert_eq!(sweep.handoffs_expired, 0);
    let sweep = state.sweep(now + Duration::from_millis(1_000), &mut events);
    assert_eq!(sweep.handoffs_expired, 1);
    assert_eq!(names(&events), ["leave lobby s1"]);
    assert_eq!(state.counts().sessions, 0);
}

#[test]
fn a_crashed_nodes_sessions_are_purged_but_handed_off_ones_wait_for_their_grace() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![
            Op::connect("s2", "bob", None),
            Op::join("s2", "lobby"),
            Op::handoff("s2", 30_000),
        ],
        now,
    );
    let mut events = Vec::new();
    let sweep = state.sweep(now + LEASE, &mut events);
    assert_eq!(sweep.nodes_purged, 1);
    assert_eq!(sweep.sessions_purged, 1);
    assert_eq!(names(&events), ["leave lobby s1"]);
    assert_eq!(sessions_in(&state, "lobby"), ["s2"]);

    // s2 resumes on node b within its grace: no event.
    events.clear();
    sync(&mut state, "b", "b1", true, vec![], now + LEASE);
    let (_, events) = sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        now + LEASE,
    );
    assert!(events.is_empty());
    assert_eq!(state.lookup(&["bob".into()], &[])[0].node, "b");
}

#[test]
fn a_resume_that_raced_a_crash_moves_ownership_without_events() {
    let (mut state, now) = with_alice_in_lobby();
    sync(&mut state, "b", "b1", true, vec![], now);
    let (_, events) = sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now,
    );
    assert!(events.is_empty());
    // The old node's late ops and its lease expiry no longer touch s1.
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::disconnect("s1")],
        now,
    );
    assert!(events.is_empty());
    let mut events = Vec::new();
    sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![],
        now + Duration::from_secs(10),
    );
    let sweep = state.sweep(now + LEASE, &mut events);
    assert_eq!((sweep.nodes_purged, sweep.sessions_purged), (1, 0));
    assert!(events.is_empty());
    assert_eq!(sessions_in(&state, "lobby"), ["s1"]);
}

#[test]
fn a_restarted_presence_rebuilds_silently() {
    let t0 = Instant::now();
    let mut state = State::new(t0, WINDOW);
    let now = t0 + Duration::from_secs(1);
    let (out, _) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::leave("s1", "lobby")],
        now,
    );
    assert!(out.need_full);
    let (out, events) = sync(
        &mut state,
        "a",
        "a1",
        true,
        vec![
            Op::connect("s1", "alice", Some(serde_json::json!({"name": "Alice"}))),
            Op::join("s1", "lobby"),
            Op::join("s1", "kitchen"),
        ],
        now,
    );
    assert!(out.silent);
    assert!(events.is_empty());
    let members = state.members("lobby");
    assert_eq!(members[0].info, Some(serde_json::json!({"name": "Alice"})));
    // Once rebuilt, the node's changes are events again.
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::leave("s1", "lobby")],
        now,
    );
    assert_eq!(names(&events), ["leave lobby s1"]);
}

#[test]
fn a_node_first_seen_after_the_rebuild_window_is_announced() {
    let (mut state, now) = settled();
    let (out, events) = sync(
        &mut state,
        "a",
        "a1",
        true,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now,
    );
    assert!(!out.silent);
    assert_eq!(names(&events), ["join lobby s1"]);
}

#[test]
fn a_full_sync_of_a_known_node_applies_the_difference() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![
            Op::join("s1", "kitchen"),
            Op::connect("s2", "bob", None),
            Op::join("s2", "lobby"),
            Op::connect("s3", "carol", None),
            Op::join("s3", "lobby"),
            Op::handoff("s3", 60_000),
        ],
        now,
    );
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        true,
        vec![
            Op::connect("s1", "alice", None),
            Op::join("s1", "lobby"),
            Op::join("s1", "garden"),
            Op::connect("s4", "dave", None),
            Op::join("s4", "lobby"),
        ],
        now,
    );
    let mut got = names(&events);
    got.sort();
    assert_eq!(
        got,
        [
            "join garden s1",
            "join lobby s4",
            "leave kitchen s1",
            "leave lobby s2"
        ]
    );
    // s3 is in handoff grace: not in the snapshot, still a member.
    assert_eq!(sessions_in(&state, "lobby"), ["s1", "s3", "s4"]);
}

#[test]
fn a_handoff_carried_by_a_full_sync_applies_only_to_sessions_it_does_not_list() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        now,
    );
    // s2 was handed off while the snapshot was built; s1's handoff is
    // older than its (re)connect, which the snapshot shows.
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        true,
        vec![
            Op::connect("s1", "alice", None),
            Op::join("s1", "lobby"),
            Op::handoff("s1", 1_000),
            Op::handoff("s2", 1_000),
        ],
        now,
    );
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(state.counts().handoffs, 1);
    assert_eq!(state.lookup(&[], &["s1".into(), "s2".into()]).len(), 1);
    let mut events = Vec::new();
    state.sweep(now + Duration::from_secs(1), &mut events);
    assert_eq!(names(&events), ["leave lobby s2"]);
}

#[test]
fn a_restarted_gateway_loses_its_old_sessions_but_keeps_resumed_ones() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        now,
    );
    let (out, events) = sync(
        &mut state,
        "a",
        "a2",
        true,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        now,
    );
    assert!(out.replaced_incarnation && !out.silent);
    assert_eq!(names(&events), ["leave lobby s1"]);
    let (out, _) = sync(&mut state, "a", "a1", false, vec![], now);
    assert!(out.need_full, "the old incarnation is gone");
}

#[test]
fn a_resent_batch_is_not_applied_twice() {
    let (mut state, now) = settled();
    let mut events = Vec::new();
    let req = |seq, ops| SyncRequest {
        incarnation: "a1".into(),
        lease_ms: None,
        full: false,
        seq: Some(seq),
        ops,
    };
    let full = SyncRequest {
        full: true,
        ..req(10, vec![])
    };
    state.sync("a", full, LEASE, now, &mut events);
    let batch = vec![
        Op::connect("s1", "alice", None),
        Op::join("s1", "lobby"),
        Op::leave("s1", "lobby"),
    ];
    state.sync("a", req(10, batch.clone()), LEASE, now, &mut events);
    assert_eq!(names(&events).len(), 2);
    // The response was lost; the client sends the batch again, grown.
    let mut grown = batch;
    grown.push(Op::join("s1", "kitchen"));
    let out = state.sync("a", req(10, grown), LEASE, now, &mut events);
    assert_eq!((out.applied, out.ignored), (1, 3));
    assert_eq!(names(&events).len(), 3);
    // A gap means lost ops: start over.
    let out = state.sync("a", req(20, vec![]), LEASE, now, &mut events);
    assert!(out.need_full);
}

#[test]
fn a_reused_session_id_of_another_user_is_a_new_session() {
    let (mut state, now) = with_alice_in_lobby();
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s1", "mallory", None)],
        now,
    );
    assert_eq!(names(&events), ["leave lobby s1"]);
    assert!(state.members("lobby").is_empty());
}

#[test]
fn leases_are_renewed_by_syncs() {
    let (mut state, now) = with_alice_in_lobby();
    let mut events = Vec::new();
    let later = now + Duration::from_secs(10);
    sync(&mut state, "a", "a1", false, vec![], later);
    assert_eq!(state.sweep(now + LEASE, &mut events).nodes_purged, 0);
    assert_eq!(state.sweep(later + LEASE, &mut events).nodes_purged, 1);
    assert_eq!(names(&events), ["leave lobby s1"]);
}

#[test]
fn absurd_leases_and_graces_are_bounded() {
    let (mut state, now) = with_alice_in_lobby();
    let mut events = Vec::new();
    let req = SyncRequest {
        incarnation: "a1".into(),
        lease_ms: Some(u64::MAX),
        full: false,
        seq: None,
        ops: vec![Op::handoff("s1", u64::MAX)],
    };
    state.sync("a", req, LEASE, now, &mut events);
    let sweep = state.sweep(now + MAX_DURATION, &mut events);
    assert_eq!((sweep.nodes_purged, sweep.handoffs_expired), (1, 1));
}

#[test]
fn invalid_ops_are_skipped() {
    let (mut state, now) = with_alice_in_lobby();
    let (out, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![
            Op::join("s1", ""),
            Op::join("s1", "a{b}"),
            Op::join("nobody", "x"),
        ],
        now,
    );
    assert_eq!((out.applied, out.ignored), (0, 3));
    assert!(events.is_empty());
}

#[test]
fn the_first_member_occupies_a_room_and_the_last_vacates_it_across_nodes() {
    let (mut state, now) = settled();
    sync(&mut state, "a", "a1", true, vec![], now);
    sync(&mut state, "b", "b1", true, vec![], now);
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now,
    );
    assert_eq!(all(&events), ["occupied lobby", "join lobby s1"]);
    // Another node's session joins the occupied room: a join only.
    let (_, events) = sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        now,
    );
    assert_eq!(all(&events), ["join lobby s2"]);
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::leave("s1", "lobby")],
        now,
    );
    assert_eq!(all(&events), ["leave lobby s1"]);
    let (_, events) = sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::leave("s2", "lobby"), Op::join("s2", "lobby")],
        now,
    );
    assert_eq!(
        all(&events),
        [
            "leave lobby s2",
            "vacated lobby",
            "occupied lobby",
            "join lobby s2"
        ]
    );
}

#[test]
fn a_disconnect_leaves_every_room_then_ends_the_session_as_closed() {
    let (mut state, now) = with_alice_in_lobby();
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![
            Op::connect("s2", "bob", None),
            Op::join("s2", "lobby"),
            Op::join("s1", "kitchen"),
            Op::disconnect("s1"),
            // A session in no room ends too.
            Op::connect("s3", "carol", None),
            Op::disconnect("s3"),
        ],
        now,
    );
    assert_eq!(
        all(&events),
        [
            "join lobby s2",
            "occupied kitchen",
            "join kitchen s1",
            "leave kitchen s1",
            "vacated kitchen",
            "leave lobby s1",
            "end s1 Closed",
            "end s3 Closed",
        ]
    );
    // A second disconnect of a forgotten session: nothing.
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::disconnect("s1")],
        now,
    );
    assert!(events.is_empty());
}

#[test]
fn a_session_resumed_within_its_grace_never_ends() {
    let (mut state, now) = with_alice_in_lobby();
    sync(&mut state, "b", "b1", true, vec![], now);
    let mut events = Vec::new();
    let (_, handoff) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::handoff("s1", 1_000)],
        now,
    );
    events.extend(handoff);
    let (_, resume) = sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now + Duration::from_millis(500),
    );
    events.extend(resume);
    // Past the grace, and past node a's lease: still nothing.
    sync(&mut state, "b", "b1", false, vec![], now + LEASE);
    state.sweep(now + LEASE + Duration::from_secs(1), &mut events);
    assert!(events.is_empty(), "{:?}", all(&events));
    assert_eq!(sessions_in(&state, "lobby"), ["s1"]);
}

#[test]
fn a_grace_that_runs_out_ends_the_session_as_expired() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::handoff("s1", 1_000)],
        now,
    );
    let mut events = Vec::new();
    state.sweep(now + Duration::from_millis(1_000), &mut events);
    assert_eq!(
        all(&events),
        ["leave lobby s1", "vacated lobby", "end s1 Expired"]
    );
}

#[test]
fn a_lost_node_ends_its_sessions_as_node_lost_and_handed_off_ones_as_expired() {
    let (mut state, now) = with_alice_in_lobby();
    sync(&mut state, "b", "b1", true, vec![], now);
    sync(
        &mut state,
        "b",
        "b1",
        false,
        vec![Op::connect("s9", "zed", None), Op::join("s9", "lobby")],
        now,
    );
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![
            Op::connect("s2", "bob", None),
            Op::join("s2", "attic"),
            Op::handoff("s2", 20_000),
        ],
        now,
    );
    // Node b stays alive; node a's lease runs out.
    sync(&mut state, "b", "b1", false, vec![], now + LEASE);
    let mut events = Vec::new();
    let sweep = state.sweep(now + LEASE, &mut events);
    assert_eq!((sweep.nodes_purged, sweep.sessions_purged), (1, 1));
    assert_eq!(all(&events), ["leave lobby s1", "end s1 NodeLost"]);
    events.clear();
    state.sweep(now + Duration::from_secs(20), &mut events);
    assert_eq!(
        all(&events),
        ["leave attic s2", "vacated attic", "end s2 Expired"]
    );
}

#[test]
fn a_full_sync_ends_what_the_node_no_longer_lists_closed_or_node_lost_after_a_restart() {
    let (mut state, now) = with_alice_in_lobby();
    sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        now,
    );
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        true,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now,
    );
    assert_eq!(all(&events), ["leave lobby s2", "end s2 Closed"]);
    let (_, events) = sync(&mut state, "a", "a2", true, vec![], now);
    assert_eq!(
        all(&events),
        ["leave lobby s1", "vacated lobby", "end s1 NodeLost"]
    );
}

#[test]
fn a_reused_session_id_ends_the_old_session() {
    let (mut state, now) = with_alice_in_lobby();
    let (_, events) = sync(
        &mut state,
        "a",
        "a1",
        false,
        vec![Op::connect("s1", "mallory", None), Op::join("s1", "lobby")],
        now,
    );
    assert_eq!(
        all(&events),
        [
            "leave lobby s1",
            "vacated lobby",
            "end s1 Closed",
            "occupied lobby",
            "join lobby s1"
        ]
    );
}

#[test]
fn a_silent_rebuild_emits_nothing_and_later_joins_see_the_rooms_occupied() {
    let t0 = Instant::now();
    let mut state = State::new(t0, WINDOW);
    let now = t0 + Duration::from_secs(1);
    let (out, events) = sync(
        &mut state,
        "a",
        "a1",
        true,
        vec![Op::connect("s1", "alice", None), Op::join("s1", "lobby")],
        now,
    );
    assert!(out.silent);
    assert!(events.is_empty());
    // A node first seen after the window is announced, into a room
    // that is already occupied.
    let later = t0 + WINDOW + Duration::from_secs(1);
    sync(&mut state, "a", "a1", false, vec![], later);
    let (out, events) = sync(
        &mut state,
        "b",
        "b1",
        true,
        vec![Op::connect("s2", "bob", None), Op::join("s2", "lobby")],
        later,
    );
    assert!(!out.silent);
    assert_eq!(all(&events), ["join lobby s2"]);
}

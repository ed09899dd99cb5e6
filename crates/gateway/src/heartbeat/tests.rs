use super::*;
use crate::auth::Identity;
use crate::outbox::Outbox;
use roomcast_protocol::Codec;

fn conn(id: u64, seen: u64) -> Arc<ConnHandle> {
    let identity = Identity {
        user: Arc::from("u"),
        info: None,
        anonymous: true,
        rooms: Vec::new(),
        publish: Vec::new(),
        expires_at: None,
        subs: Vec::new(),
    };
    let c = ConnHandle::new(
        id,
        Arc::from(format!("s{id}")),
        identity,
        Codec::Json,
        Outbox::new(16, 1 << 16),
    );
    c.last_seen.store(seen, Relaxed);
    Arc::new(c)
}

fn pinged(c: &ConnHandle) -> bool {
    c.ping_sent.load(Relaxed) > c.last_seen.load(Relaxed)
}

/// Ping interval 400 ms, pong timeout 400 ms: a 100 ms tick.
fn registry() -> (Registry, u64) {
    let ms = Duration::from_millis;
    let registry = Registry::new(ms(400), ms(400));
    assert_eq!(registry.timing.tick_ms, 100);
    (registry, now_ms())
}

#[test]
fn a_silent_connection_is_pinged_after_the_interval_then_closed_after_the_timeout() {
    let (registry, base) = registry();
    let c = conn(8, base);
    registry.insert(c.clone());
    registry.check_shard(0, base + 390);
    assert!(!pinged(&c));
    registry.check_shard(0, base + 510);
    assert!(pinged(&c));
    assert!(!c.outbox.is_closing());
    registry.check_shard(0, base + 800);
    assert!(!c.outbox.is_closing(), "closed before the pong timeout");
    registry.check_shard(0, base + 1_000);
    assert!(c.outbox.is_closing());
}

#[test]
fn a_connection_heard_from_is_neither_pinged_nor_closed() {
    let (registry, base) = registry();
    let busy = conn(16, base);
    let answers = conn(24, base);
    registry.insert(busy.clone());
    registry.insert(answers.clone());
    let mut now = base;
    for _ in 0..40 {
        now += 100;
        busy.last_seen.store(now - 50, Relaxed);
        if pinged(&answers) {
            // The pong comes 30 ms after the ping.
            answers
                .last_seen
                .store(answers.ping_sent.load(Relaxed) + 30, Relaxed);
        }
        registry.check_shard(0, now);
    }
    assert_eq!(busy.ping_sent.load(Relaxed), 0);
    assert!(!busy.outbox.is_closing());
    assert!(
        answers.ping_sent.load(Relaxed) > base + 3_000,
        "pinged all along"
    );
    assert!(!answers.outbox.is_closing());
}

#[test]
fn with_a_timeout_longer_than_the_interval_pings_follow_each_pong_by_the_interval() {
    let ms = Duration::from_millis;
    let registry = Registry::new(ms(100), ms(2_000));
    assert_eq!(registry.timing.tick_ms, 50);
    let base = now_ms();
    let c = conn(8, base);
    registry.insert(c.clone());
    let (mut now, mut pings, mut last_ping) = (base, 0, 0);
    while now < base + 2_000 {
        now += 50;
        if pinged(&c) {
            c.last_seen.store(c.ping_sent.load(Relaxed) + 10, Relaxed);
        }
        registry.check_shard(0, now);
        let sent = c.ping_sent.load(Relaxed);
        if sent != last_ping {
            pings += 1;
            last_ping = sent;
        }
    }
    // One ping per 150 ms (the interval after the pong, rounded up to
    // the tick): 13 in 2 s, and none closed.
    assert!(pings >= 12, "{pings} pings");
    assert!(!c.outbox.is_closing());
}

#[test]
fn a_removed_connection_leaves_nothing_that_touches_the_next_one_in_its_slot() {
    let (registry, base) = registry();
    let old = conn(32, base);
    let slot = registry.insert(old.clone());
    registry.remove(slot);
    // Reuses the slab slot, and is heard from all along.
    let new = conn(40, base + 200);
    registry.insert(new.clone());
    registry.check_shard(0, base + 450);
    assert!(!pinged(&old) && !pinged(&new));
    assert_eq!(registry.len(), 1);
    registry.check_shard(0, base + 650);
    assert!(pinged(&new));
}

#[test]
fn after_a_stall_every_due_connection_is_handled_in_one_tick() {
    let (registry, base) = registry();
    let conns: Vec<_> = (0..50).map(|i| conn(i * 8, base + i)).collect();
    for c in &conns {
        registry.insert(c.clone());
    }
    registry.check_shard(0, base + 60_000);
    assert!(conns.iter().all(|c| pinged(c)));
    registry.check_shard(0, base + 60_500);
    assert!(conns.iter().all(|c| c.outbox.is_closing()));
}

#[test]
fn a_long_ping_interval_keeps_the_wheel_small_and_still_pings() {
    let ms = Duration::from_millis;
    let registry = Registry::new(ms(86_400_000), ms(10_000));
    assert_eq!(registry.shards[0].lock().wheel.len(), MAX_BUCKETS as usize);
    let base = now_ms();
    let c = conn(8, base);
    registry.insert(c.clone());
    let tick = registry.timing.tick_ms;
    let mut now = base;
    while now + tick * 500 < base + 86_400_000 {
        now += tick * 500;
        registry.check_shard(0, now);
        assert!(!pinged(&c), "pinged early at +{} ms", now - base);
    }
    registry.check_shard(0, base + 86_400_000 + tick);
    assert!(pinged(&c));
}

#[test]
fn a_shard_sleeps_until_its_next_filled_tick() {
    let (registry, base) = registry();
    let wake = |r: &Registry| r.shards[0].lock().wake_tick;
    assert_eq!(wake(&registry), NOTHING_DUE);
    let c = conn(8, base);
    let slot = registry.insert(c.clone());
    // Due one interval (400 ms) after it was last heard from.
    assert_eq!(wake(&registry), (base + 400).div_ceil(100));
    registry.check_shard(0, base + 100);
    assert_eq!(
        wake(&registry),
        (base + 400).div_ceil(100),
        "nothing due before"
    );
    registry.check_shard(0, base + 450);
    assert!(pinged(&c));
    // Back at the pong timeout.
    assert_eq!(wake(&registry), (base + 450 + 400).div_ceil(100));
    registry.remove(slot);
    registry.check_shard(0, base + 900);
    assert_eq!(
        wake(&registry),
        NOTHING_DUE,
        "a gone connection is not filed again"
    );
}

#[tokio::test]
async fn the_tickers_ping_a_connection_filed_while_they_slept() {
    let ms = Duration::from_millis;
    let registry = Arc::new(Registry::new(ms(200), ms(2_000)));
    registry.spawn_tickers();
    // Every ticker is asleep with nothing due.
    tokio::time::sleep(ms(120)).await;
    let c = conn(8, now_ms());
    registry.insert(c.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pinged(&c) {
        assert!(std::time::Instant::now() < deadline, "never pinged");
        tokio::time::sleep(ms(10)).await;
    }
    let late = c.ping_sent.load(Relaxed) - c.last_seen.load(Relaxed);
    // Not before the interval; the upper bound leaves room for a test
    // machine under load (a ticker never woken would not ping at all).
    assert!((200..=1_000).contains(&late), "pinged {late} ms after");
}

#[test]
fn the_tick_follows_the_shorter_heartbeat_setting_within_bounds() {
    let ms = Duration::from_millis;
    // The defaults: pong timeout 10 s, ping interval 25 s.
    assert_eq!(tick_for(ms(25_000), ms(10_000)), ms(2_000));
    assert_eq!(tick_for(ms(400), ms(400)), ms(100));
    assert_eq!(tick_for(ms(300), ms(10_000)), ms(75));
    assert_eq!(tick_for(ms(100), ms(100)), ms(50));
}

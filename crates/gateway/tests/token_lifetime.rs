//! Token lifetime (PROTOCOL.md, Additions 2026-12): `token_expires_at` in
//! `welcome`, the `refresh` command, and the 4401 close of a connection
//! whose token ran out, all against a real gateway.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::ws::{join, resume_hello, Event, RawClient};
use roomcast_testkit::{http_request, Gateway, HookBackend};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-for-hs256-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn gateway() -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_AUTH__JWT_SECRET", SECRET),
        // Pings far apart: only the token's expiry can end the connection.
        ("ROOMCAST_HEARTBEAT__PING_INTERVAL_MS", "25000"),
    ])
}

fn api_publish(gw: &Gateway, body: &str) -> (u16, String) {
    http_request(
        gw.addr,
        "POST",
        "/api/publish",
        &[
            ("Authorization", "Bearer test-key"),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .unwrap()
}

async fn connect(gw: &Gateway, claims: Value) -> (RawClient, ServerFrame) {
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    let welcome = c.hello(Some(&token(claims))).await;
    (c, welcome)
}

/// Waits for the close, skipping frames; returns its code and when it came.
async fn closed_at(c: &mut RawClient, within: Duration) -> (u16, f64) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event_within(left).await {
            Some(Event::Closed(code)) => return (code, now_f64()),
            Some(Event::Frame(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_connection_whose_token_expires_is_closed_with_4401_within_5_s_of_exp() {
    let gw = gateway();
    let exp = now() + 3;
    let (mut c, welcome) = connect(&gw, json!({"sub": "alice", "exp": exp})).await;
    let ServerFrame::Welcome {
        token_expires_at, ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    assert_eq!(token_expires_at, Some(exp));
    let (code, at) = closed_at(&mut c, Duration::from_secs(12)).await;
    assert_eq!(code, 4401);
    let after = at - exp as f64;
    assert!(
        (0.0..=5.0).contains(&after),
        "closed {after:.2} s after exp"
    );
    assert!(gw.metric("roomcast_token_expiries_total") >= 1);
}

#[tokio::test]
async fn a_refreshed_connection_stays_open_past_its_first_exp() {
    let gw = gateway();
    let exp = now() + 2;
    let (mut c, _) = connect(&gw, json!({"sub": "bob", "exp": exp, "rooms": ["*"]})).await;
    c.request(join(1, "chat:a")).await;
    let later = now() + 600;
    let reply = c
        .request(ClientFrame::Refresh {
            id: Some(2),
            token: token(json!({"sub": "bob", "exp": later, "rooms": ["*"]})),
        })
        .await;
    assert_eq!(
        reply,
        ServerFrame::Refreshed {
            id: Some(2),
            expires_at: later
        }
    );
    // Well past the first token's exp plus the grace: still open.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pong = c.request(ClientFrame::Ping { id: Some(3) }).await;
    assert_eq!(pong, ServerFrame::Pong { id: Some(3) });
    assert_eq!(
        gw.metric("roomcast_token_refreshes_total{outcome=\"refreshed\"}"),
        1
    );
}

#[tokio::test]
async fn a_refresh_with_another_users_token_is_forbidden_and_the_old_expiry_stands() {
    let gw = gateway();
    let exp = now() + 3;
    let (mut c, _) = connect(&gw, json!({"sub": "carol", "exp": exp})).await;
    let reply = c
        .request(ClientFrame::Refresh {
            id: Some(1),
            token: token(json!({"sub": "mallory", "exp": now() + 600})),
        })
        .await;
    assert!(
        matches!(
            reply,
            ServerFrame::Error {
                id: Some(1),
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    // A forged or expired token: unauthorized.
    let reply = c
        .request(ClientFrame::Refresh {
            id: Some(2),
            token: "not-a-jwt".into(),
        })
        .await;
    assert!(
        matches!(
            reply,
            ServerFrame::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{reply:?}"
    );
    let (code, at) = closed_at(&mut c, Duration::from_secs(12)).await;
    assert_eq!(code, 4401, "the old expiry stands");
    assert!(at - exp as f64 <= 5.0);
    assert_eq!(
        gw.metric("roomcast_token_refreshes_total{outcome=\"refused\"}"),
        2
    );
}

#[tokio::test]
async fn a_refresh_that_narrows_the_rooms_leaves_those_no_longer_allowed() {
    let gw = gateway();
    let (mut c, _) = connect(
        &gw,
        json!({"sub": "dave", "exp": now() + 600, "rooms": ["chat:*", "news:*"]}),
    )
    .await;
    c.request(join(1, "chat:a")).await;
    c.request(join(2, "news:b")).await;
    c.send(&ClientFrame::Refresh {
        id: Some(3),
        token: token(json!({"sub": "dave", "exp": now() + 900, "rooms": ["chat:*"]})),
    })
    .await;
    let left = c.recv().await;
    assert_eq!(
        left,
        ServerFrame::Left {
            id: None,
            room: "news:b".into(),
            reason: Some("forbidden".into())
        }
    );
    assert!(matches!(
        c.recv().await,
        ServerFrame::Refreshed { id: Some(3), .. }
    ));
    // The new patterns are in force.
    let refused = c.request(join(4, "news:c")).await;
    assert!(
        matches!(
            refused,
            ServerFrame::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn subs_join_the_rooms_at_hello_and_a_resume_restores_them() {
    let gw = gateway();
    let claims = json!({"sub": "erin", "exp": now() + 600, "subs": ["user:erin", "news:all"]});
    let (mut c, welcome) = connect(&gw, claims.clone()).await;
    let ServerFrame::Welcome {
        session,
        resume_token,
        ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    let mut rooms = Vec::new();
    let (mut epoch, mut news_epoch) = (String::new(), String::new());
    for _ in 0..2 {
        match c.recv().await {
            ServerFrame::Joined {
                id: None,
                room,
                epoch: e,
                ..
            } => {
                if room == "user:erin" {
                    epoch = e;
                } else {
                    news_epoch = e;
                }
                rooms.push(room)
            }
            other => panic!("expected joined, got {other:?}"),
        }
    }
    rooms.sort();
    assert_eq!(rooms, ["news:all", "user:erin"]);
    // Messages of the room reach the connection.
    let (status, body) = api_publish(&gw, r#"{"room":"user:erin","data":{"n":1}}"#);
    assert_eq!(status, 200, "{body}");
    let (data, offset) = c.next_message("user:erin").await;
    assert_eq!(data, json!({"n": 1}));
    c.abort();

    // A resume restores both rooms with what was missed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = api_publish(&gw, r#"{"room":"user:erin","data":{"n":2}}"#);
    assert_eq!(status, 200);
    let mut back = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    let mut hello = resume_hello(&session, &resume_token, "user:erin", offset, &epoch);
    if let ClientFrame::Hello {
        token: t,
        resume: Some(r),
        ..
    } = &mut hello
    {
        *t = Some(token(claims));
        r.rooms.push(roomcast_protocol::ResumeRoom {
            room: "news:all".into(),
            offset: 0,
            epoch: news_epoch.clone(),
            presence: None,
        });
    }
    back.send(&hello).await;
    let welcome = back.recv().await;
    let ServerFrame::Welcome { resumed, rooms, .. } = welcome else {
        panic!("{welcome:?}")
    };
    assert!(resumed);
    let mut restored: Vec<_> = rooms.iter().map(|r| r.room.clone()).collect();
    restored.sort();
    assert_eq!(restored, ["news:all", "user:erin"]);
    let (data, _) = back.next_message("user:erin").await;
    assert_eq!(data, json!({"n": 2}));
}

fn proxied_gateway(backend: &HookBackend) -> Gateway {
    Gateway::start(&[
        ("ROOMCAST_AUTH__JWT_SECRET", SECRET),
        ("ROOMCAST_HEARTBEAT__PING_INTERVAL_MS", "25000"),
        ("ROOMCAST_PROXY__REFRESH__URL", &backend.url("/refresh")),
        ("ROOMCAST_PROXY__REFRESH_AHEAD_MS", "2500"),
        ("ROOMCAST_PROXY__CONNECT__URL", &backend.url("/connect")),
    ])
}

#[tokio::test]
async fn the_refresh_proxy_extends_a_connection_and_tells_the_client() {
    let backend = HookBackend::start("unused-secret", 0.1);
    let gw = proxied_gateway(&backend);
    let exp = now() + 3;
    let (mut c, _) = connect(&gw, json!({"sub": "frank", "exp": exp})).await;
    let told = c.recv().await;
    let ServerFrame::Refreshed {
        id: None,
        expires_at,
    } = told
    else {
        panic!("expected refreshed without id, got {told:?}")
    };
    assert!(expires_at >= exp + 50, "{expires_at} vs {exp}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pong = c.request(ClientFrame::Ping { id: Some(1) }).await;
    assert_eq!(pong, ServerFrame::Pong { id: Some(1) });
    let calls = backend.calls("refresh");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["body"]["user"], "frank");
    assert_eq!(calls[0]["body"]["expires_at"], exp);
    assert_eq!(
        gw.metric("roomcast_token_refreshes_total{outcome=\"proxy_extended\"}"),
        1
    );
}

#[tokio::test]
async fn a_connection_the_refresh_proxy_refuses_ends_at_its_expiry() {
    let backend = HookBackend::start("unused-secret", 0.1);
    let gw = proxied_gateway(&backend);
    let exp = now() + 3;
    let (mut c, _) = connect(&gw, json!({"sub": "stop-gina", "exp": exp})).await;
    let (code, at) = closed_at(&mut c, Duration::from_secs(12)).await;
    assert_eq!(code, 4401);
    assert!((0.0..=5.0).contains(&(at - exp as f64)));
    assert_eq!(backend.calls("refresh").len(), 1);
    assert_eq!(
        gw.metric("roomcast_token_refreshes_total{outcome=\"proxy_failed\"}"),
        1
    );
}

#[tokio::test]
async fn the_connect_proxy_may_name_server_side_subscriptions() {
    let backend = HookBackend::start("unused-secret", 0.1);
    let gw = Gateway::start(&[("ROOMCAST_PROXY__CONNECT__URL", &backend.url("/connect"))]);
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    let welcome = c.hello(Some("subs:feed:1,feed:2")).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    for room in ["feed:1", "feed:2"] {
        match c.recv().await {
            ServerFrame::Joined {
                id: None, room: r, ..
            } => assert_eq!(r, room),
            other => panic!("expected joined {room}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_token_past_its_exp_is_refused_at_hello() {
    let gw = gateway();
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    c.send(&ClientFrame::Hello {
        id: Some(1),
        token: Some(token(json!({"sub": "hal", "exp": now() - 2}))),
        resume: None,
    })
    .await;
    assert!(matches!(
        c.recv().await,
        ServerFrame::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    assert_eq!(c.expect_close().await, 4401);
}

#[tokio::test]
async fn a_refresh_with_a_shorter_token_moves_the_close_earlier() {
    let gw = gateway();
    let (mut c, _) = connect(&gw, json!({"sub": "ivan", "exp": now() + 600})).await;
    let exp = now() + 3;
    let reply = c
        .request(ClientFrame::Refresh {
            id: Some(1),
            token: token(json!({"sub": "ivan", "exp": exp})),
        })
        .await;
    assert_eq!(
        reply,
        ServerFrame::Refreshed {
            id: Some(1),
            expires_at: exp
        }
    );
    let (code, at) = closed_at(&mut c, Duration::from_secs(12)).await;
    assert_eq!(code, 4401);
    let after = at - exp as f64;
    assert!(
        (0.0..=5.0).contains(&after),
        "closed {after:.2} s after exp"
    );
}

/// Opens `n` connections (`hello` with `token(i)`), `batch` at a time.
async fn open_many(
    gw: &Gateway,
    n: usize,
    token: impl Fn(usize) -> Option<String>,
) -> Vec<RawClient> {
    let mut out = Vec::with_capacity(n);
    let batch = 250;
    for start in (0..n).step_by(batch) {
        let opened = futures::future::join_all((start..(start + batch).min(n)).map(|i| {
            let url = gw.ws_url();
            let t = token(i);
            async move {
                let mut c = RawClient::connect(&url, Codec::Json).await;
                let welcome = c.hello(t.as_deref()).await;
                assert!(
                    matches!(welcome, ServerFrame::Welcome { .. }),
                    "{welcome:?}"
                );
                c
            }
        }))
        .await;
        out.extend(opened);
    }
    out
}

fn tasks(gw: &Gateway) -> i64 {
    gw.metric("roomcast_tasks") as i64
}

/// 10,000 connections whose tokens expire: the node runs one task per
/// connection, as for connections without a token, and no more (the
/// expiry rides on the heartbeat's shard tickers, not on a timer or a
/// task of its own).
#[tokio::test]
async fn ten_thousand_expiring_tokens_add_no_task_or_timer_per_connection() {
    let gw = Gateway::start(&[
        ("ROOMCAST_AUTH__JWT_SECRET", SECRET),
        ("ROOMCAST_AUTH__ANONYMOUS", "true"),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
    ]);
    let idle = tasks(&gw);
    let anonymous = open_many(&gw, 1_000, |_| None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_anonymous = (tasks(&gw) - idle) as f64 / 1_000.0;
    drop(anonymous);
    assert!(wait_until_tasks(&gw, idle).await, "tasks did not settle");

    let exp = now() + 600;
    let tokened = open_many(&gw, 10_000, |i| {
        Some(token(json!({"sub": format!("u{i}"), "exp": exp})))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_token = (tasks(&gw) - idle) as f64 / 10_000.0;
    eprintln!(
        "tasks: idle {idle}, per anonymous connection {per_anonymous:.3}, per connection with an expiring token {per_token:.3}"
    );
    assert!(
        (per_token - per_anonymous).abs() < 0.01,
        "{per_token} vs {per_anonymous}"
    );
    assert_eq!(tokened.len(), 10_000);
}

async fn wait_until_tasks(gw: &Gateway, at_most: i64) -> bool {
    for _ in 0..100 {
        if tasks(gw) <= at_most {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_subscribed_room_joins_again_as_joined_and_a_fresh_session_recovers_it_from_the_hello() {
    let gw = gateway();
    let claims = json!({"sub": "judy", "exp": now() + 600, "subs": ["inbox:judy"]});
    let (mut c, _) = connect(&gw, claims.clone()).await;
    let (offset, epoch) = match c.recv().await {
        ServerFrame::Joined {
            id: None,
            offset,
            epoch,
            ..
        } => (offset, epoch),
        other => panic!("{other:?}"),
    };
    // The token's `rooms` does not cover it, yet joining it again answers
    // joined (and a leave then a join is allowed: it is a subscription).
    let again = c.request(join(1, "inbox:judy")).await;
    assert!(
        matches!(again, ServerFrame::Joined { id: Some(1), .. }),
        "{again:?}"
    );
    c.request(ClientFrame::Leave {
        id: Some(2),
        room: "inbox:judy".into(),
    })
    .await;
    let back = c.request(join(3, "inbox:judy")).await;
    assert!(
        matches!(back, ServerFrame::Joined { id: Some(3), .. }),
        "{back:?}"
    );
    c.abort();

    // Published while away; the resume names an unknown session, so a new
    // one starts, and its subscription recovers from the hello's offset.
    let (status, _) = api_publish(&gw, r#"{"room":"inbox:judy","data":{"n":7}}"#);
    assert_eq!(status, 200);
    let mut fresh = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    let mut hello = resume_hello("no-such-session", "bad.token", "inbox:judy", offset, &epoch);
    if let ClientFrame::Hello { token: t, .. } = &mut hello {
        *t = Some(token(claims));
    }
    fresh.send(&hello).await;
    assert!(matches!(
        fresh.recv().await,
        ServerFrame::Welcome { resumed: false, .. }
    ));
    assert!(matches!(
        fresh.recv().await,
        ServerFrame::Joined {
            id: None,
            recovered: Some(true),
            ..
        }
    ));
    let (data, _) = fresh.next_message("inbox:judy").await;
    assert_eq!(data, json!({"n": 7}));
}

/// Found by the `jwt_claims` fuzz target: an `exp` near `u64::MAX` once
/// overflowed the expiry arithmetic. Such a token never expires.
#[tokio::test]
async fn a_token_whose_exp_is_the_largest_number_is_welcomed() {
    let gw = gateway();
    let (mut c, welcome) = connect(&gw, json!({"sub": "kim", "exp": u64::MAX})).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { token_expires_at: Some(e), .. } if e == u64::MAX),
        "{welcome:?}"
    );
    let reply = c
        .request(ClientFrame::Refresh {
            id: Some(1),
            token: token(json!({"sub": "kim", "exp": u64::MAX - 1})),
        })
        .await;
    assert!(
        matches!(reply, ServerFrame::Refreshed { id: Some(1), .. }),
        "{reply:?}"
    );
    let pong = c.request(ClientFrame::Ping { id: Some(2) }).await;
    assert_eq!(pong, ServerFrame::Pong { id: Some(2) });
}

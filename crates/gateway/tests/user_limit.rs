//! `limits.max_connections_per_user` (PROTOCOL.md, Additions 2026-12):
//! counted across the nodes of a cluster through the presence service
//! (real Redis, real presence, two real gateways), and per node without one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join, RawClient};
use roomcast_testkit::{http_request, wait_until, Gateway, PresenceService};
use serde_json::json;

const SECRET: &str = "test-secret-for-hs256-0123456789";

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "rooms": ["*"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn members(gw: &Gateway, room: &str) -> usize {
    let (status, body) = http_request(
        gw.addr,
        "GET",
        &format!("/api/presence/{room}"),
        &[("Authorization", "Bearer test-key")],
        "",
    )
    .unwrap();
    if status != 200 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["members"].as_array().map_or(0, Vec::len)
}

fn node(extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![
        ("ROOMCAST_AUTH__JWT_SECRET", SECRET),
        ("ROOMCAST_LIMITS__MAX_CONNECTIONS_PER_USER", "2"),
    ];
    env.extend_from_slice(extra);
    Gateway::start(&env)
}

/// A `hello` as `user`: its answer (welcome, or error then close code).
async fn hello(gw: &Gateway, user: &str) -> (RawClient, Result<ServerFrame, (ServerFrame, u16)>) {
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    c.send(&ClientFrame::Hello {
        id: Some(1),
        token: Some(token(user)),
        resume: None,
    })
    .await;
    let first = c.recv().await;
    if matches!(first, ServerFrame::Welcome { .. }) {
        return (c, Ok(first));
    }
    let code = c.expect_close().await;
    (c, Err((first, code)))
}

fn assert_refused(answer: Result<ServerFrame, (ServerFrame, u16)>) {
    match answer {
        Err((
            ServerFrame::Error {
                id: Some(1),
                code: ErrorCode::LimitExceeded,
                ..
            },
            4409,
        )) => {}
        other => panic!("expected limit_exceeded and 4409, got {other:?}"),
    }
}

/// Connects as `user` until welcomed (the presence service may still list
/// a connection that just ended for one sync interval).
async fn welcomed_within(gw: &Gateway, user: &str, within: Duration) -> RawClient {
    let deadline = Instant::now() + within;
    loop {
        let (c, answer) = hello(gw, user).await;
        match answer {
            Ok(_) => return c,
            Err(e) if Instant::now() > deadline => panic!("still refused: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn the_per_user_limit_holds_across_two_nodes_and_frees_up_when_a_connection_ends() {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let env = [
        ("ROOMCAST_REDIS__URL", redis.url()),
        ("ROOMCAST_PRESENCE__URL", presence.url()),
        (
            "ROOMCAST_AUTH__RESUME_SECRET",
            "user-limit-test-secret".into(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = node(&env);
    let b = node(&env);

    let (mut first, answer) = hello(&a, "alice").await;
    assert!(answer.is_ok(), "{answer:?}");
    let (mut second, answer) = hello(&b, "alice").await;
    assert!(answer.is_ok(), "{answer:?}");
    first.request(join(2, "lobby")).await;
    second.request(join(2, "lobby")).await;
    // Once the presence service lists both, a third on either node is refused.
    assert!(
        wait_until(Duration::from_secs(10), || members(&a, "lobby") == 2),
        "presence never listed both connections"
    );
    let (_, answer) = hello(&a, "alice").await;
    assert_refused(answer);
    let (_, answer) = hello(&b, "alice").await;
    assert_refused(answer);
    // Another user is not affected.
    let (_bob, answer) = hello(&a, "bob").await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(a.metric("roomcast_connections_rejected_total{reason=\"user_limit\"}") >= 1);

    // One of alice's connections ends: a new one is welcome again.
    drop(second);
    let mut third = welcomed_within(&a, "alice", Duration::from_secs(5)).await;
    third.request(join(2, "lobby")).await;
    assert!(wait_until(Duration::from_secs(10), || members(&a, "lobby") == 2));
    let (_, answer) = hello(&b, "alice").await;
    assert_refused(answer);
}

#[tokio::test]
async fn without_presence_the_limit_counts_this_nodes_connections() {
    let gw = node(&[]);
    let (_one, answer) = hello(&gw, "carol").await;
    assert!(answer.is_ok());
    let (two, answer) = hello(&gw, "carol").await;
    assert!(answer.is_ok());
    let (_, answer) = hello(&gw, "carol").await;
    assert_refused(answer);
    drop(two);
    let _again = welcomed_within(&gw, "carol", Duration::from_secs(5)).await;
}

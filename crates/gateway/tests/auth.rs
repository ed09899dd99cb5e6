//! JWT variants against a node with a key configured: valid tokens in every
//! supported algorithm, and each way a token can be wrong (closed 4401).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::ws::{join, publish, Event, RawClient};
use roomcast_testkit::Gateway;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-for-hs256-0123456789";

fn fixture(name: &str) -> String {
    let path = roomcast_testkit::workspace_root()
        .join("crates/gateway/tests/fixtures")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "rooms": ["chat:*"], "info": {"name": sub}})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn expect_unauthorized(gw: &Gateway, token: Option<&str>) {
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    c.send(&ClientFrame::Hello {
        id: Some(1),
        token: token.map(str::to_string),
        resume: None,
    })
    .await;
    match c.next_event().await {
        Event::Frame(ServerFrame::Error {
            code: ErrorCode::Unauthorized,
            id: Some(1),
            ..
        }) => {}
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert_eq!(c.expect_close().await, 4401);
}

fn hs_gateway() -> Gateway {
    Gateway::start(&[("ROOMCAST_AUTH__JWT_SECRET", SECRET)])
}

#[tokio::test]
async fn a_valid_hs256_token_sets_the_user_and_its_room_patterns() {
    let gw = hs_gateway();
    let token = hs256(&claims("alice"), SECRET);
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    match c.hello(Some(&token)).await {
        ServerFrame::Welcome { user, .. } => assert_eq!(user, "alice"),
        _ => unreachable!(),
    }
    assert!(matches!(
        c.request(join(1, "chat:lobby")).await,
        ServerFrame::Joined { .. }
    ));
    let f = c.request(join(2, "admin")).await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{f:?}"
    );
    let p = c
        .request(ClientFrame::Presence {
            id: Some(3),
            room: "chat:lobby".into(),
        })
        .await;
    let ServerFrame::Presence { members, .. } = p else {
        panic!("{p:?}")
    };
    assert_eq!(members[0].info, Some(json!({"name": "alice"})));
}

#[tokio::test]
async fn a_publish_claim_allows_publishing_without_joining() {
    let gw = hs_gateway();
    let c = json!({"sub": "bot", "exp": now() + 600, "publish": ["alerts:*"]});
    let token = hs256(&c, SECRET);
    let mut bot = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    bot.hello(Some(&token)).await;
    assert!(matches!(
        bot.request(publish(1, "alerts:x", json!(1))).await,
        ServerFrame::Ack {
            offset: Some(1),
            ..
        }
    ));
    let f = bot.request(publish(2, "other", json!(1))).await;
    assert!(
        matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        ),
        "{f:?}"
    );
}

#[tokio::test]
async fn the_token_may_come_in_the_authorization_header() {
    let gw = hs_gateway();
    let bearer = format!("Bearer {}", hs256(&claims("carol"), SECRET));
    let mut c = RawClient::connect_with(
        &gw.ws_url(),
        Codec::MsgPack,
        &[("Authorization", &bearer)],
        true,
    )
    .await
    .unwrap();
    match c.hello(None).await {
        ServerFrame::Welcome { user, .. } => assert_eq!(user, "carol"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn wrong_key_expired_not_yet_valid_missing_claims_alg_none_and_no_token_are_refused() {
    let gw = hs_gateway();
    expect_unauthorized(&gw, Some(&hs256(&claims("a"), "another-secret"))).await;
    let expired = json!({"sub": "a", "exp": now() - 3600});
    expect_unauthorized(&gw, Some(&hs256(&expired, SECRET))).await;
    let future = json!({"sub": "a", "exp": now() + 3600, "nbf": now() + 1800});
    expect_unauthorized(&gw, Some(&hs256(&future, SECRET))).await;
    let no_sub = json!({"exp": now() + 600});
    expect_unauthorized(&gw, Some(&hs256(&no_sub, SECRET))).await;
    let no_exp = json!({"sub": "a"});
    expect_unauthorized(&gw, Some(&hs256(&no_exp, SECRET))).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("a").to_string());
    expect_unauthorized(&gw, Some(&format!("{header}.{payload}."))).await;
    expect_unauthorized(&gw, Some("not.a.jwt")).await;
    // Anonymous access is off once a key is configured.
    expect_unauthorized(&gw, None).await;
}

#[tokio::test]
async fn rs256_tokens_verify_and_algorithm_confusion_is_refused() {
    let public = fixture("rsa-public.pem");
    let gw = Gateway::start(&[
        ("ROOMCAST_AUTH__JWT_PUBLIC_KEY", &public),
        ("ROOMCAST_AUTH__JWT_ALGORITHM", "RS256"),
    ]);
    let key = EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).unwrap();
    let token = encode(&Header::new(Algorithm::RS256), &claims("dave"), &key).unwrap();
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    assert!(
        matches!(c.hello(Some(&token)).await, ServerFrame::Welcome { ref user, .. } if user == "dave")
    );
    // HS256 signed with the public key as the secret: the classic confusion.
    expect_unauthorized(&gw, Some(&hs256(&claims("eve"), &public))).await;
}

#[tokio::test]
async fn es256_tokens_verify() {
    let gw = Gateway::start(&[
        ("ROOMCAST_AUTH__JWT_PUBLIC_KEY", &fixture("ec-public.pem")),
        ("ROOMCAST_AUTH__JWT_ALGORITHM", "ES256"),
    ]);
    let key = EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()).unwrap();
    let token = encode(&Header::new(Algorithm::ES256), &claims("frank"), &key).unwrap();
    let mut c = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    assert!(
        matches!(c.hello(Some(&token)).await, ServerFrame::Welcome { ref user, .. } if user == "frank")
    );
    expect_unauthorized(&gw, Some(&hs256(&claims("x"), SECRET))).await;
}

#[tokio::test]
async fn a_resume_needs_the_same_user() {
    let gw = hs_gateway();
    let mut alice = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    let ServerFrame::Welcome {
        session,
        resume_token,
        ..
    } = alice.hello(Some(&hs256(&claims("alice"), SECRET))).await
    else {
        unreachable!()
    };
    alice.abort();
    let mut mallory = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    mallory
        .send(&ClientFrame::Hello {
            id: None,
            token: Some(hs256(&claims("mallory"), SECRET)),
            resume: Some(roomcast_protocol::Resume {
                session: session.clone(),
                token: resume_token.clone(),
                rooms: vec![],
            }),
        })
        .await;
    assert!(
        matches!(mallory.recv().await, ServerFrame::Welcome { resumed: false, ref user, .. } if user == "mallory")
    );
    // Alice herself still can.
    let mut back = RawClient::connect(&gw.ws_url(), Codec::Json).await;
    back.send(&ClientFrame::Hello {
        id: None,
        token: Some(hs256(&claims("alice"), SECRET)),
        resume: Some(roomcast_protocol::Resume {
            session: session.clone(),
            token: resume_token,
            rooms: vec![],
        }),
    })
    .await;
    assert!(
        matches!(back.recv().await, ServerFrame::Welcome { resumed: true, session: ref s, .. } if *s == session)
    );
}

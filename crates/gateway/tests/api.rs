//! The HTTP API and the operations endpoints, with and without the key.

use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::ws::{join, joined, RawClient};
use roomcast_testkit::{http_request, Gateway};

const KEY: (&str, &str) = ("Authorization", "Bearer test-key");

#[tokio::test]
async fn api_calls_without_the_right_key_are_401() {
    let gw = Gateway::start(&[]);
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "test-key")],
    ] {
        let (status, body) = http_request(
            gw.addr,
            "POST",
            "/api/publish",
            &headers,
            r#"{"room":"r","data":1}"#,
        )
        .unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("unauthorized"), "{body}");
    }
    let (status, _) = http_request(gw.addr, "GET", "/api/stats", &[], "").unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_a_configured_key_the_api_is_closed() {
    let gw = Gateway::start(&[("ROOMCAST_API__KEY", "")]);
    let (status, body) = http_request(
        gw.addr,
        "GET",
        "/api/stats",
        &[("Authorization", "Bearer ")],
        "",
    )
    .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("api.key"), "{body}");
}

#[tokio::test]
async fn publish_send_presence_disconnect_and_stats_work_with_the_key() {
    let gw = Gateway::start(&[]);
    let (mut member, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let ServerFrame::Welcome { session, user, .. } = welcome else {
        unreachable!()
    };
    member.request(join(1, "news")).await;

    let (status, body) = http_request(
        gw.addr,
        "POST",
        "/api/publish",
        &[KEY],
        r#"{"room":"news","data":{"h":"x"}}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["offset"], 1);
    assert!(v["epoch"].is_string());
    match member.recv().await {
        ServerFrame::Message {
            offset: 1,
            data,
            from: None,
            ..
        } => assert_eq!(data["h"], "x"),
        other => panic!("{other:?}"),
    }

    let body = format!(r#"{{"to":{{"user":"{user}"}},"data":"hey"}}"#);
    let (status, body) = http_request(gw.addr, "POST", "/api/send", &[KEY], &body).unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    assert!(matches!(member.recv().await, ServerFrame::Direct { .. }));

    let (status, body) = http_request(gw.addr, "GET", "/api/presence/news", &[KEY], "").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["members"][0]["session"], session.as_str());

    let (status, body) = http_request(gw.addr, "GET", "/api/stats", &[KEY], "").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"], 1);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);

    let body = format!(r#"{{"session":"{session}"}}"#);
    let (status, body) = http_request(gw.addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"disconnected":1}"#));
    assert_eq!(member.expect_close().await, 1000);
}

/// A `{user}` disconnect also ends the sessions the user left parked (a
/// client whose connection dropped before the disconnect cannot come back
/// with its resume token), and no one else's.
#[tokio::test]
async fn a_user_disconnect_ends_the_users_parked_sessions_too() {
    let gw = Gateway::start(&[]);
    let url = gw.ws_url();
    let mut gone = joined(&url, "ban").await;
    let mut other = joined(&url, "ban").await;
    gone.close().await;
    other.close().await;
    // The teardown parks right after the close handshake.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let body = format!(r#"{{"user":"{}"}}"#, gone.user);
    let (status, answer) = http_request(gw.addr, "POST", "/api/disconnect", &[KEY], &body).unwrap();
    assert_eq!((status, answer.as_str()), (200, r#"{"disconnected":0}"#));
    assert!(
        !gone.resumes(&url, "ban").await,
        "resumed after its user's disconnect"
    );
    assert!(
        other.resumes(&url, "ban").await,
        "another user's parked session"
    );
}

#[tokio::test]
async fn bad_bodies_get_400_and_oversized_ones_413() {
    let gw = Gateway::start(&[("ROOMCAST_LIMITS__MAX_MESSAGE_BYTES", "1024")]);
    let cases = [
        ("POST", "/api/publish", "not json".to_string(), 400),
        (
            "POST",
            "/api/publish",
            r#"{"room":"a b","data":1}"#.to_string(),
            400,
        ),
        ("POST", "/api/publish", r#"{"data":1}"#.to_string(), 400),
        (
            "POST",
            "/api/send",
            r#"{"to":{},"data":1}"#.to_string(),
            400,
        ),
        (
            "POST",
            "/api/publish",
            format!(r#"{{"room":"a","data":"{}"}}"#, "x".repeat(2000)),
            413,
        ),
        ("GET", "/api/presence/a*b", String::new(), 400),
    ];
    for (method, path, body, expected) in cases {
        let (status, text) = http_request(gw.addr, method, path, &[KEY], &body).unwrap();
        assert_eq!(status, expected, "{method} {path}: {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v["error"].is_string() && v["message"].is_string(), "{text}");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_key() {
    let gw = Gateway::start(&[]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "m")).await;
    assert_eq!(
        http_request(gw.addr, "GET", "/healthz", &[], "").unwrap().0,
        200
    );
    assert_eq!(
        http_request(gw.addr, "GET", "/readyz", &[], "").unwrap().0,
        200
    );
    let (status, text) = http_request(gw.addr, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, 200);
    for family in [
        "roomcast_connections 1",
        "roomcast_connections_accepted_total 1",
        "roomcast_frames_in_total{type=\"join\"} 1",
        "roomcast_rooms 1",
        "roomcast_publish_to_deliver_seconds_bucket",
        "roomcast_disconnects_total{code=\"4508\"}",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
}

#[test]
fn history_gives_a_rooms_last_messages_and_nodes_this_nodes_stats() {
    let gw = Gateway::start(&[]);
    for i in 1..=4 {
        let body = format!(r#"{{"room":"log","data":{{"i":{i}}}}}"#);
        let (status, _) = http_request(gw.addr, "POST", "/api/publish", &[KEY], &body).unwrap();
        assert_eq!(status, 200);
    }
    let (status, body) =
        http_request(gw.addr, "GET", "/api/history/log?limit=3", &[KEY], "").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["room"], "log");
    assert_eq!(v["offset"], 4);
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(
        messages
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(messages[2]["data"]["i"], 4);
    assert_eq!(messages[2]["epoch"], v["epoch"]);
    assert_eq!(messages[2]["from"], serde_json::Value::Null);
    assert!(messages[2]["published_at_ms"].as_u64().unwrap() > 0);

    let (status, body) = http_request(gw.addr, "GET", "/api/history/empty", &[KEY], "").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["epoch"].clone(), v["offset"].clone()),
        (serde_json::Value::Null, 0.into())
    );
    for (path, expected) in [
        ("/api/history/log?limit=many", 400),
        ("/api/history/a%20b", 400),
        ("/api/history/log", 401),
        ("/api/nodes", 401),
    ] {
        let headers: &[(&str, &str)] = if expected == 401 { &[] } else { &[KEY] };
        let (status, body) = http_request(gw.addr, "GET", path, headers, "").unwrap();
        assert_eq!(status, expected, "{path}: {body}");
    }

    let (status, body) = http_request(gw.addr, "GET", "/api/nodes", &[KEY], "").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["node"], v["node"]);
    assert_eq!(nodes[0]["engine"], "memory");
    for series in [
        "connections",
        "rooms",
        "published_per_second",
        "delivered_per_second",
    ] {
        assert!(nodes[0]["history"][series].is_array(), "{series}: {v}");
    }
}

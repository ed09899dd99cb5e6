//! The admin page (`/admin/`): off by default, its own key and session
//! cookie, its API the HTTP API behind that cookie, startup refusing a bad
//! `admin.key`, and the cluster view any node shows.

use std::time::Duration;

use roomcast_protocol::{Codec, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{join, RawClient};
use roomcast_testkit::{
    binary, http_exchange, http_request, wait_until, Gateway, HttpResponse, PresenceService,
    Process,
};
use serde_json::Value;

const ADMIN_KEY: &str = "admin-key-for-the-tests";
const API_KEY: (&str, &str) = ("Authorization", "Bearer test-key");

fn admin_node(extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![
        ("ROOMCAST_ADMIN__ENABLED", "true"),
        ("ROOMCAST_ADMIN__KEY", ADMIN_KEY),
    ];
    env.extend_from_slice(extra);
    Gateway::start(&env)
}

fn login(gw: &Gateway, key: &str) -> HttpResponse {
    let body = serde_json::json!({ "key": key }).to_string();
    http_exchange(gw.addr, "POST", "/admin/login", &[], &body).unwrap()
}

/// The `name=value` part of the session cookie a login set.
fn session_cookie(response: &HttpResponse) -> String {
    let set = response.header_values("set-cookie");
    assert_eq!(set.len(), 1, "{:?}", response.headers);
    set[0].split(';').next().unwrap().trim().to_string()
}

fn admin_call(gw: &Gateway, method: &str, path: &str, cookie: &str, body: &str) -> (u16, Value) {
    let headers = [("Cookie", cookie)];
    let (status, text) = http_request(gw.addr, method, path, &headers, body).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn the_admin_page_is_off_unless_enabled() {
    let gw = Gateway::start(&[("ROOMCAST_ADMIN__KEY", ADMIN_KEY)]);
    for (method, path) in [
        ("GET", "/admin/"),
        ("GET", "/admin/admin.js"),
        ("GET", "/admin/api/nodes"),
        ("POST", "/admin/login"),
    ] {
        let (status, _) = http_request(gw.addr, method, path, &[], "").unwrap();
        assert_eq!(status, 404, "{method} {path}");
    }
}

#[test]
fn the_right_key_opens_a_session_cookie_and_a_wrong_one_is_refused() {
    let gw = admin_node(&[]);
    let page = http_exchange(gw.addr, "GET", "/admin/", &[], "").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Admin key"), "{}", page.body);
    let csp = page.header_values("content-security-policy").join("");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    for script in ["/admin/admin.js", "/admin/charts.js"] {
        let (status, text) = http_request(gw.addr, "GET", script, &[], "").unwrap();
        assert_eq!(status, 200);
        assert!(!text.contains("test-key") && !text.contains(ADMIN_KEY));
    }

    let wrong = login(&gw, "not-the-admin-key");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("wrong admin key"), "{}", wrong.body);
    assert!(wrong.header_values("set-cookie").is_empty());
    // The API key is not the admin key.
    assert_eq!(login(&gw, "test-key").status, 401);

    let ok = login(&gw, ADMIN_KEY);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let set = ok.header_values("set-cookie")[0].to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    assert!(!set.contains(ADMIN_KEY), "the key is in the cookie: {set}");
    let cookie = session_cookie(&ok);

    let (status, body) = http_request(gw.addr, "GET", "/admin/api/nodes", &[], "").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not logged in"), "{body}");
    // The API key does not open the admin API, nor the cookie the API.
    let (status, _) = http_request(gw.addr, "GET", "/admin/api/nodes", &[API_KEY], "").unwrap();
    assert_eq!(status, 401);
    let (status, _) =
        http_request(gw.addr, "GET", "/api/stats", &[("Cookie", &cookie)], "").unwrap();
    assert_eq!(status, 401);

    let (status, nodes) = admin_call(&gw, "GET", "/admin/api/nodes", &cookie, "");
    assert_eq!(status, 200, "{nodes}");
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    assert_eq!(nodes["nodes"][0]["node"], nodes["node"]);
    assert_eq!(nodes["nodes"][0]["live"], true);
    let (status, session) = admin_call(&gw, "GET", "/admin/session", &cookie, "");
    assert_eq!(status, 200, "{session}");
    assert!(session["expires_at_ms"].as_u64().unwrap() > 0);

    // An altered token is refused.
    let (name, value) = cookie.split_once('=').unwrap();
    let (expiry, rest) = value.split_once('.').unwrap();
    let extended = format!("{name}={}.{rest}", expiry.parse::<u64>().unwrap() + 3600);
    let (status, _) = admin_call(&gw, "GET", "/admin/api/nodes", &extended, "");
    assert_eq!(status, 401);

    // A logout clears the cookie and ends the session.
    let out = http_exchange(gw.addr, "POST", "/admin/logout", &[("Cookie", &cookie)], "").unwrap();
    assert_eq!(out.status, 200);
    assert!(out.header_values("set-cookie")[0].contains("Max-Age=0"));
    let (status, _) = admin_call(&gw, "GET", "/admin/api/nodes", &cookie, "");
    assert_eq!(status, 401, "a logged-out session still works");
}

#[tokio::test]
async fn the_admin_api_publishes_inspects_and_disconnects_through_the_http_api() {
    let gw = admin_node(&[]);
    let cookie = session_cookie(&login(&gw, ADMIN_KEY));
    let (mut member, welcome) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    let ServerFrame::Welcome { session, user, .. } = welcome else {
        unreachable!()
    };
    member.request(join(1, "ops")).await;

    let body = r#"{"room":"ops","data":{"text":"from the admin page"}}"#;
    let (status, answer) = admin_call(&gw, "POST", "/admin/api/publish", &cookie, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["offset"], 1);
    match member.recv().await {
        ServerFrame::Message {
            offset: 1, data, ..
        } => {
            assert_eq!(data["text"], "from the admin page")
        }
        other => panic!("{other:?}"),
    }

    let (status, presence) = admin_call(&gw, "GET", "/admin/api/presence/ops", &cookie, "");
    assert_eq!(status, 200);
    assert_eq!(presence["members"][0]["session"], session.as_str());
    let (status, history) = admin_call(&gw, "GET", "/admin/api/history/ops", &cookie, "");
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["offset"], 1);
    assert_eq!(history["messages"][0]["offset"], 1);
    assert_eq!(history["messages"][0]["epoch"], answer["epoch"]);

    let body = format!(r#"{{"user":"{user}"}}"#);
    let (status, answer) = admin_call(&gw, "POST", "/admin/api/disconnect", &cookie, &body);
    assert_eq!((status, answer["disconnected"].as_u64()), (200, Some(1)));
    assert_eq!(member.expect_close().await, 1000);
}

#[test]
fn wrong_admin_keys_are_rate_limited_per_address() {
    let gw = admin_node(&[("ROOMCAST_ADMIN__MAX_LOGIN_FAILURES_PER_MINUTE", "3")]);
    for _ in 0..3 {
        assert_eq!(login(&gw, "guess-guess-guess-guess").status, 401);
    }
    let limited = login(&gw, "guess-guess-guess-guess");
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.body.contains("try again"), "{}", limited.body);
    // Until the minute is over, even the right key is refused.
    assert_eq!(login(&gw, ADMIN_KEY).status, 429);
}

#[test]
fn requests_from_another_site_are_refused() {
    let gw = admin_node(&[]);
    let body = serde_json::json!({ "key": ADMIN_KEY }).to_string();
    for header in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Site", "same-site"),
    ] {
        let (status, text) =
            http_request(gw.addr, "POST", "/admin/login", &[header], &body).unwrap();
        assert_eq!(status, 403, "{header:?}: {text}");
    }
    let origin = format!("http://{}", gw.addr);
    let proxied = [
        ("Origin", "https://admin.example.com"),
        ("X-Forwarded-Host", "admin.example.com"),
    ];
    let same: [&[(&str, &str)]; 3] = [
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &[("Origin", &origin)],
        &proxied,
    ];
    for headers in same {
        let (status, text) = http_request(gw.addr, "POST", "/admin/login", headers, &body).unwrap();
        assert_eq!(status, 200, "{headers:?}: {text}");
    }
}

/// Starts a gateway that is expected to refuse its configuration; its
/// exit code and output.
fn refused(env: &[(&str, &str)]) -> (Option<Option<i32>>, String) {
    let mut vars = vec![("ROOMCAST_LISTEN", "127.0.0.1:0".to_string())];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let mut process = Process::spawn("gateway", &binary("roomcast-gateway"), &[], &vars);
    let code = process.wait_exit(Duration::from_secs(10));
    (code, process.output())
}

#[test]
fn a_bad_admin_key_stops_startup_naming_it() {
    for (env, why) in [
        (vec![("ROOMCAST_ADMIN__ENABLED", "true")], "empty"),
        (
            vec![
                ("ROOMCAST_ADMIN__ENABLED", "true"),
                ("ROOMCAST_ADMIN__KEY", "short-key"),
            ],
            "9 bytes",
        ),
        (
            vec![
                ("ROOMCAST_ADMIN__ENABLED", "true"),
                ("ROOMCAST_ADMIN__KEY", "the-same-key-for-both"),
                ("ROOMCAST_API__KEY", "the-same-key-for-both"),
            ],
            "differ from api.key",
        ),
    ] {
        let (code, output) = refused(&env);
        assert_eq!(code, Some(Some(2)), "{output}");
        assert!(output.contains("admin.key"), "{output}");
        assert!(output.contains(why), "{why}: {output}");
        assert!(!output.contains("short-key"), "the key is echoed: {output}");
    }
}

#[test]
fn the_admin_key_can_come_from_a_file() {
    let path = std::env::temp_dir().join(format!("roomcast-admin-key-{}", std::process::id()));
    std::fs::write(&path, format!("{ADMIN_KEY}\n")).unwrap();
    let from_file = format!("file:{}", path.display());
    let gw = Gateway::start(&[
        ("ROOMCAST_ADMIN__ENABLED", "true"),
        ("ROOMCAST_ADMIN__KEY", &from_file),
    ]);
    assert_eq!(login(&gw, ADMIN_KEY).status, 200);
    let _ = std::fs::remove_file(&path);
}

/// Two nodes of a cluster: each one's admin page shows both, with the
/// connections each holds, and a node that stops reporting goes stale.
#[tokio::test]
async fn any_node_shows_the_whole_cluster() {
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let node = |id: &str| {
        admin_node(&[
            ("ROOMCAST_REDIS__URL", &redis.url()),
            ("ROOMCAST_PRESENCE__URL", &presence.url()),
            ("ROOMCAST_AUTH__RESUME_SECRET", "cluster-view-secret"),
            ("ROOMCAST_NODE__ID", id),
        ])
    };
    let (a, mut b) = (node("node-a"), node("node-b"));
    // A session cookie of one node is good on the other (same admin.key).
    let cookie = session_cookie(&login(&a, ADMIN_KEY));
    let mut clients = Vec::new();
    for url in [a.ws_url(), b.ws_url(), b.ws_url()] {
        clients.push(RawClient::ready(&url, Codec::Json).await.0);
    }
    let connections = |gw: &Gateway, id: &str| -> Option<(u64, bool)> {
        let (_, view) = admin_call(gw, "GET", "/admin/api/nodes", &cookie, "");
        let nodes = view["nodes"].as_array()?;
        let n = nodes.iter().find(|n| n["node"] == id)?;
        Some((n["connections"].as_u64()?, n["live"].as_bool()?))
    };
    for gw in [&a, &b] {
        let both = wait_until(Duration::from_secs(10), || {
            connections(gw, "node-a") == Some((1, true))
                && connections(gw, "node-b") == Some((2, true))
        });
        assert!(
            both,
            "{:?} {:?}",
            connections(gw, "node-a"),
            connections(gw, "node-b")
        );
    }
    let (_, view) = admin_call(&b, "GET", "/admin/api/nodes", &cookie, "");
    let history = &view["nodes"][0]["history"];
    assert_eq!(history["interval_ms"], 1000, "{view}");
    assert!(!history["connections"].as_array().unwrap().is_empty());
    // The API key's /api/nodes and /api/stats see the same nodes.
    let (status, text) = http_request(b.addr, "GET", "/api/stats", &[API_KEY], "").unwrap();
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["nodes"].as_array().unwrap().len(), 2, "{stats}");

    // History through node b of messages published through node a.
    for i in 1..=3 {
        let body = format!(r#"{{"room":"shared","data":{{"i":{i}}}}}"#);
        let (status, _) = http_request(a.addr, "POST", "/api/publish", &[API_KEY], &body).unwrap();
        assert_eq!(status, 200);
    }
    let (status, text) =
        http_request(b.addr, "GET", "/api/history/shared?limit=2", &[API_KEY], "").unwrap();
    assert_eq!(status, 200, "{text}");
    let recent: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(recent["offset"], 3);
    let offsets: Vec<_> = recent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3]);
    assert_eq!(recent["messages"][1]["data"]["i"], 3);
    // Asking about a room creates nothing in Redis.
    let (_, text) = http_request(b.addr, "GET", "/api/history/nowhere", &[API_KEY], "").unwrap();
    let nowhere: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(nowhere["epoch"], Value::Null, "{nowhere}");
    assert_eq!(redis.cmd(&["EXISTS", "rc:{nowhere}:meta"]).trim(), "0");

    // Node b dies: node a shows it as not reporting.
    b.process.signal("KILL");
    assert!(b.process.wait_exit(Duration::from_secs(5)).is_some());
    let stale = wait_until(Duration::from_secs(8), || {
        matches!(connections(&a, "node-b"), Some((_, false)))
    });
    assert!(stale, "{:?}", connections(&a, "node-b"));
}

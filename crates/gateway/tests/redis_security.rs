//! Redis with a password and TLS: nodes and the presence service connect
//! over `rediss://` with the password in the URL and the server checked
//! against a given CA; a wrong password leaves the node up, answering
//! `unavailable`, never acking.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roomcast_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use roomcast_testkit::redis::redis_binary;
use roomcast_testkit::ws::{ack_offset, join, RawClient};
use roomcast_testkit::{free_port, wait_until, Gateway, PresenceService, Process};
use serde_json::json;

const PASSWORD: &str = "s3cret-pass";

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=roomcast-test-ca",
        "-days",
        "2",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_to_redis_over_tls_with_a_password() {
    let dir = std::env::temp_dir().join(format!("roomcast-tls-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let (plain, tls) = (free_port(), free_port());
    let d = |f: &str| dir.join(f).to_string_lossy().to_string();
    let args = [
        "--port",
        &plain.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        PASSWORD,
        "--tls-port",
        &tls.to_string(),
        "--tls-cert-file",
        &d("redis.crt"),
        "--tls-key-file",
        &d("redis.key"),
        "--tls-ca-cert-file",
        &d("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]
    .map(|s| s.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _redis = Process::spawn("redis-tls", &redis_binary("redis-server"), &args, &[]);
    let up = wait_until(Duration::from_secs(10), || {
        Command::new(redis_binary("redis-cli"))
            .args([
                "-p",
                &plain.to_string(),
                "-a",
                PASSWORD,
                "--no-auth-warning",
                "ping",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    });
    assert!(up, "redis with TLS did not start");

    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{tls}");
    let ca = d("ca.crt");
    let presence = PresenceService::start(&url, &[("ROOMCAST_REDIS__TLS_CA_FILE", &ca)]);
    let node = |id: &str, url: &str| {
        Gateway::start(&[
            ("ROOMCAST_REDIS__URL", url),
            ("ROOMCAST_REDIS__TLS_CA_FILE", &ca),
            ("ROOMCAST_PRESENCE__URL", &presence.url()),
            ("ROOMCAST_AUTH__RESUME_SECRET", "tls-test"),
            ("ROOMCAST_NODE__ID", id),
        ])
    };
    let a = node("node-a", &url);
    let b = node("node-b", &url);
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    member.request(join(1, "secure")).await;
    let (mut publisher, _) = RawClient::ready(&a.ws_url(), Codec::Json).await;
    publisher.request(join(1, "secure")).await;
    let ack = publisher
        .request(ClientFrame::Publish {
            id: Some(2),
            room: "secure".into(),
            data: json!("over tls"),
            key: None,
        })
        .await;
    assert_eq!(ack_offset(&ack), Some(1), "{ack:?}");
    let (data, _) = member.next_message("").await;
    assert_eq!(data, json!("over tls"));
    // The password never reaches the logs.
    assert!(!a.process.output().contains(PASSWORD), "password logged");

    // A node with the wrong password stays up and never acks.
    let wrong = node("node-c", &format!("rediss://:wrong@127.0.0.1:{tls}"));
    let (mut c, _) = RawClient::ready(&wrong.ws_url(), Codec::Json).await;
    let reply = c.request(join(1, "secure")).await;
    assert!(
        matches!(
            reply,
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(
        c.request(ClientFrame::Ping { id: Some(3) }).await,
        ServerFrame::Pong { id: Some(3) }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

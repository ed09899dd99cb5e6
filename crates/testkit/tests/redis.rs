//! The Redis harness itself: real servers start, answer, lose their data on
//! restart, freeze on pause; a real three-master cluster converges and
//! carries sharded pub/sub.

use std::time::Duration;

use roomcast_testkit::redis::{redis_binary, RedisCluster, RedisServer};
use roomcast_testkit::{wait_until, Process};

#[test]
fn server_answers_and_restart_loses_data() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert!(redis.ping());
    assert_eq!(redis.cmd(&["PING"]), "PONG");
    assert_eq!(redis.cmd(&["SET", "room:1", "hello"]), "OK");
    assert_eq!(redis.cmd(&["GET", "room:1"]), "hello");
    // No persistence configured.
    assert_eq!(redis.cmd(&["CONFIG", "GET", "save"]), "save");
    assert_eq!(
        redis.cmd(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );

    let old_pid = redis.pid();
    redis.restart();
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert_ne!(redis.pid(), old_pid, "restart is a new process");
    assert_eq!(redis.cmd(&["EXISTS", "room:1"]), "0", "data is gone");

    redis.stop();
    assert!(!redis.ping(), "stopped server must not answer");
    assert_eq!(redis.pid(), None);
    redis.restart();
    assert!(redis.ping(), "restart after stop starts it again");
}

#[test]
fn paused_server_does_not_answer_until_resumed() {
    let redis = RedisServer::start();
    redis.cmd(&["SET", "k", "v"]);
    redis.pause();
    assert!(!redis.ping(), "a paused server must not answer");
    redis.resume();
    assert!(wait_until(Duration::from_secs(5), || redis.ping()));
    assert_eq!(redis.cmd(&["GET", "k"]), "v", "pause keeps data");
}

#[test]
fn servers_get_distinct_ports() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    a.cmd(&["SET", "only-in-a", "1"]);
    assert_eq!(b.cmd(&["EXISTS", "only-in-a"]), "0");
}

#[test]
fn cluster_is_ok_and_carries_sharded_pubsub() {
    let mut cluster = RedisCluster::start();
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.url(),
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    assert_eq!(cluster.urls()[2], format!("redis://127.0.0.1:{}", ports[2]));
    for node in cluster.nodes() {
        let info = node.cmd(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }

    // Keys spread over all three masters.
    let owners: std::collections::BTreeSet<u16> = (0..30)
        .map(|i| {
            let key = format!("room:{i}");
            assert_eq!(cluster.cmd(&["SET", &key, "x"]), "OK");
            cluster.port_for_key(&key)
        })
        .collect();
    assert_eq!(owners.len(), 3, "keys should land on every master");

    // Sharded pub/sub: subscribe on the shard owning the channel, publish
    // through the cluster client (which follows the redirect).
    let channel = "room:lobby";
    let owner = cluster.port_for_key(channel);
    let other = *ports.iter().find(|p| **p != owner).unwrap();
    let other_node = cluster.nodes().iter().find(|n| n.port() == other).unwrap();
    let moved = other_node.cmd(&["SPUBLISH", channel, "x"]);
    assert!(moved.contains("MOVED"), "non-owner must redirect: {moved}");

    let owner_port = owner.to_string();
    let subscriber = Process::spawn(
        "ssubscribe",
        &redis_binary("redis-cli"),
        &["-h", "127.0.0.1", "-p", &owner_port, "SSUBSCRIBE", channel],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            subscriber.output().contains("ssubscribe")
        }),
        "subscription not confirmed: {}",
        subscriber.output()
    );
    assert_eq!(cluster.cmd(&["SPUBLISH", channel, "hello-shard"]), "1");
    assert!(
        wait_until(Duration::from_secs(10), || {
            subscriber.output().contains("hello-shard")
        }),
        "message not received: {}",
        subscriber.output()
    );
    drop(subscriber);

    // A master that comes back empty rejoins with its slots, without keys.
    let key = "room:restart";
    cluster.cmd(&["SET", key, "v"]);
    let owner = cluster.port_for_key(key);
    let node = cluster
        .nodes_mut()
        .iter_mut()
        .find(|n| n.port() == owner)
        .unwrap();
    node.restart();
    cluster.wait_ok(Duration::from_secs(30));
    assert_eq!(cluster.port_for_key(key), owner);
    assert_eq!(cluster.cmd(&["EXISTS", key]), "0");
}

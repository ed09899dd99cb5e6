use super::*;

#[tokio::test]
async fn parked_sessions_expire() {
    let store = ParkedSessions::default();
    let short = Duration::from_millis(0);
    store
        .park("s".into(), Identity::anonymous("s"), short)
        .await;
    std::thread::sleep(Duration::from_millis(2));
    assert!(matches!(store.take("s").await, Taken::Nothing));
    let long = Duration::from_secs(60);
    store.park("t".into(), Identity::anonymous("t"), long).await;
    assert!(matches!(store.take("t").await, Taken::Parked(_)));
    assert!(
        matches!(store.take("t").await, Taken::Nothing),
        "a session is resumed once"
    );
}

#[tokio::test]
async fn ending_a_user_drops_that_users_parked_sessions_only() {
    let store = ParkedSessions::default();
    let ttl = Duration::from_secs(60);
    for (session, user) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
        store
            .park(session.into(), Identity::anonymous_user(user), ttl)
            .await;
    }
    assert_eq!(store.end_user("alice").await, 2);
    assert!(matches!(store.take("a1").await, Taken::Nothing));
    assert!(matches!(store.take("a2").await, Taken::Nothing));
    assert!(matches!(store.take("b1").await, Taken::Parked(_)));
    assert_eq!(store.end_user("alice").await, 0);
}

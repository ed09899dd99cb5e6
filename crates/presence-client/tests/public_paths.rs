//! The paths the gateway and the presence service import from
//! `roomcast_presence_client::client` stay public, whichever module of the
//! crate defines each type.

use roomcast_presence_client::client::{
    Claimed, ClientOptions, ClientStatus, Parked, PresenceClient, PresenceError, Snapshot,
};

#[test]
fn the_client_module_exports_the_client_and_its_types() {
    let options = ClientOptions::new("http://127.0.0.1:1", "node-1", "run-1");
    assert_eq!((options.batch_max, options.max_queue), (500, 100_000));
    let claimed = Claimed::default();
    assert_eq!(
        (claimed.record, claimed.displaced, claimed.listed),
        (None, None, None)
    );
    assert_ne!(Parked::Stored, Parked::Superseded);
    assert_eq!(
        PresenceError::Timeout.to_string(),
        "presence service did not answer in time"
    );
    let status = ClientStatus {
        connected: false,
        presence: None,
        queued: 0,
        full_pending: true,
        overflows: 0,
    };
    assert!(status.full_pending);
    let snapshot: Snapshot = std::sync::Arc::new(Vec::new);
    assert!(snapshot().is_empty());
    let start: fn(ClientOptions, Snapshot) -> PresenceClient = PresenceClient::start_with;
    let _ = start;
}

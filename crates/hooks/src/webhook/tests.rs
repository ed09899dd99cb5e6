use super::*;

use std::time::Duration;

fn on(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        secret: "s3cret".into(),
        ..WebhookConfig::default()
    }
}

#[test]
fn defaults_are_off_with_every_event_type() {
    let config = WebhookConfig::default();
    assert!(!config.enabled());
    assert_eq!(config.events.len(), 5);
    assert_eq!(config.event_mask(), 0b1_1111);
    assert_eq!(
        (config.batch_max, config.batch_delay_ms, config.timeout_ms),
        (100, 100, 5_000)
    );
    assert_eq!(
        (
            config.retry_initial_ms,
            config.retry_max_ms,
            config.max_queued
        ),
        (200, 30_000, 100_000)
    );
    config.validate("webhooks").unwrap();
    on("http://backend:9000/webhook")
        .validate("webhooks")
        .unwrap();
}

#[test]
fn validation_names_the_key_at_fault() {
    let err = |config: WebhookConfig| config.validate("webhooks").unwrap_err();
    let no_secret = WebhookConfig {
        secret: String::new(),
        ..on("https://backend/webhook")
    };
    assert_eq!(
        err(no_secret),
        "webhooks.secret must be set when webhooks.url is set"
    );
    assert!(err(on("ftp://backend/webhook")).starts_with("webhooks.url must start with"));
    assert!(err(on("http://")).starts_with("webhooks.url is not a valid URL"));
    let unknown = WebhookConfig {
        events: vec!["presence_join".into(), "room_explode".into()],
        ..on("http://b/w")
    };
    let e = err(unknown);
    assert!(
        e.starts_with("webhooks.events: unknown event type \"room_explode\""),
        "{e}"
    );
    let none = WebhookConfig {
        events: vec![],
        ..on("http://b/w")
    };
    assert!(err(none).starts_with("webhooks.events must name"));
    let zero = WebhookConfig {
        batch_max: 0,
        ..on("http://b/w")
    };
    assert_eq!(err(zero), "webhooks.batch_max must be greater than 0");
    let zero = WebhookConfig {
        max_queued: 0,
        ..WebhookConfig::default()
    };
    assert_eq!(err(zero), "webhooks.max_queued must be greater than 0");
    let inverted = WebhookConfig {
        retry_initial_ms: 5_000,
        retry_max_ms: 1_000,
        ..on("http://b/w")
    };
    assert!(err(inverted).starts_with("webhooks.retry_initial_ms"));
    let huge = WebhookConfig {
        batch_delay_ms: u64::MAX,
        ..on("http://b/w")
    };
    assert!(err(huge).starts_with("webhooks.batch_delay_ms must be at most"));
}

#[test]
fn debug_never_shows_the_secret() {
    let text = format!("{:?}", on("http://b/w"));
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("<redacted>"));
}

#[test]
fn events_are_a_list_or_one_string_with_commas() {
    let config: WebhookConfig =
        serde_json::from_str(r#"{"events": ["room_occupied", "session_end"]}"#).unwrap();
    assert_eq!(config.events, ["room_occupied", "session_end"]);
    assert_eq!(config.batch_max, 100, "other keys keep their defaults");
    let config: WebhookConfig =
        serde_json::from_str(r#"{"events": "presence_join, presence_leave"}"#).unwrap();
    assert_eq!(config.events, ["presence_join", "presence_leave"]);
    assert_eq!(
        config.event_mask(),
        EventType::PresenceJoin.bit() | EventType::PresenceLeave.bit()
    );
}

#[test]
fn events_serialize_as_the_contract_says() {
    let join = WebhookEvent::presence_join("chat:1", "alice", "s1");
    let json = serde_json::to_value(&join).unwrap();
    assert_eq!(json["type"], "presence_join");
    assert_eq!(json["room"], "chat:1");
    assert_eq!(json["user"], "alice");
    assert_eq!(json["session"], "s1");
    assert!(json.get("reason").is_none());
    assert_eq!(json["id"].as_str().unwrap().len(), 32);
    assert!(json["time_ms"].as_u64().unwrap() > 1_600_000_000_000);

    let end = WebhookEvent::session_end("alice", "s1", EndReason::NodeLost);
    let json = serde_json::to_value(&end).unwrap();
    assert_eq!(json["type"], "session_end");
    assert_eq!(json["reason"], "node_lost");
    assert!(json.get("room").is_none());

    let vacated = serde_json::to_value(WebhookEvent::room_vacated("r")).unwrap();
    let keys: Vec<&String> = vacated.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "{vacated}");
    assert_eq!(
        WebhookEvent::presence_leave("r", "u", "s").kind,
        EventType::PresenceLeave
    );
    assert_eq!(
        WebhookEvent::room_occupied("r").kind,
        EventType::RoomOccupied
    );
    assert_ne!(
        WebhookEvent::room_occupied("r").id,
        WebhookEvent::room_occupied("r").id
    );
    let back: WebhookEvent = serde_json::from_value(serde_json::to_value(&end).unwrap()).unwrap();
    assert_eq!(back, end);
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all() {
    let initial = Duration::from_millis(200);
    let max = Duration::from_secs(30);
    let top = |attempt| backoff(attempt, initial, max, 0.999_999);
    let bottom = |attempt| backoff(attempt, initial, max, 0.0);
    assert_eq!(bottom(0), Duration::from_millis(100));
    assert!(top(0) <= initial && top(0) > Duration::from_millis(199));
    assert_eq!(bottom(1), Duration::from_millis(200));
    assert_eq!(bottom(3), Duration::from_millis(800));
    assert_eq!(bottom(20), Duration::from_secs(15));
    assert!(top(20) <= max);
    assert!(top(u32::MAX) <= max, "no overflow");
    for attempt in 0..40 {
        assert!(bottom(attempt) <= bottom(attempt + 1));
    }
}

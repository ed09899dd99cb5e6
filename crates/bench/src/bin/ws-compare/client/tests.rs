use super::*;

#[test]
fn messages_are_json_of_exactly_the_length_asked_for() {
    for (len, seq) in [
        (100, 0),
        (512, 7),
        (1024, 123_456),
        (4096, u64::from(u32::MAX)),
    ] {
        let message = json_message(len, seq);
        assert_eq!(message.len(), len, "{len} bytes, seq {seq}");
        let value: serde_json::Value = serde_json::from_slice(&message).unwrap();
        assert_eq!(value["offset"], seq);
    }
    // Shorter than its fixed part: the fixed part, with an empty text.
    let short = json_message(10, 3);
    assert_eq!(
        &short[..],
        br#"{"type":"message","room":"lobby","offset":3,"from":"user-3","data":{"text":""}}"#
    );
}

#[test]
fn a_message_is_the_same_bytes_it_always_was() {
    // As the message builder wrote it before it used the library's filler.
    assert_eq!(
        &json_message(120, 5)[..],
        br#"{"type":"message","room":"lobby","offset":5,"from":"user-5","data":{"text":"brown hello the fox roomcast quick jumps "}}"#
    );
}

#[test]
fn connections_take_ten_loopback_source_addresses_in_turn() {
    assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(source_address(9), Ipv4Addr::new(127, 0, 0, 10));
    assert_eq!(source_address(10), Ipv4Addr::new(127, 0, 0, 1));
}

use super::*;

#[test]
fn path_segments_are_percent_encoded() {
    assert_eq!(segment("chat:lobby@x=1"), "chat:lobby@x=1");
    assert_eq!(segment("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
}

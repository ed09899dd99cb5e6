//! Webhook signatures.
//!
//! A webhook request carries `X-Roomcast-Timestamp` (Unix seconds) and
//! `X-Roomcast-Signature: v1=<hex>`, where `<hex>` is HMAC-SHA256 with the
//! shared secret over `"{timestamp}.{body}"`. Binding the timestamp into the
//! MAC lets the backend refuse replays of old requests.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-roomcast-timestamp";
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";

/// `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v1=");
    for byte in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// Whether `signature` is this body's signature at `timestamp`, and the
/// timestamp is within `tolerance_s` of `now_s`. Compares in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: u64,
    body: &[u8],
    signature_header: &str,
    now_s: u64,
    tolerance_s: u64,
) -> bool {
    if now_s.abs_diff(timestamp) > tolerance_s {
        return false;
    }
    let expected = signature(secret, timestamp, body);
    let given = signature_header.as_bytes();
    let expected = expected.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_old_timestamp_does_not() {
        let sig = signature(b"secret", 1_700_000_000, b"{\"events\":[]}");
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        let now = 1_700_000_010;
        assert!(verify(
            b"secret",
            1_700_000_000,
            b"{\"events\":[]}",
            &sig,
            now,
            300
        ));
        assert!(!verify(
            b"secret",
            1_700_000_000,
            b"{\"events\":[1]}",
            &sig,
            now,
            300
        ));
        assert!(!verify(
            b"other",
            1_700_000_000,
            b"{\"events\":[]}",
            &sig,
            now,
            300
        ));
        assert!(!verify(
            b"secret",
            1_700_000_001,
            b"{\"events\":[]}",
            &sig,
            now,
            300
        ));
        assert!(!verify(
            b"secret",
            1_700_000_000,
            b"{\"events\":[]}",
            &sig,
            now + 600,
            300
        ));
    }

    #[test]
    fn known_vector() {
        // printf '%s' '1.x' | openssl dgst -sha256 -hmac k
        assert_eq!(
            signature(b"k", 1, b"x"),
            "v1=976cb87e4f568d1c0f03f32859e90af8597cf00b978ba37c229c97d3a15b8449"
        );
    }
}

//! The API key as both binaries' HTTP APIs take it: `Authorization: Bearer
//! <key>`.

use http::{header, HeaderMap};

/// The token of an `Authorization: Bearer <token>` header; empty when the
/// header is missing, not text, or of another scheme (so it matches no key).
pub fn bearer_token(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_header_gives_a_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), "");
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), "");
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer_token(&headers), "s3cret");
    }
}

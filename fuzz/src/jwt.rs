//! The property of `jwt_claims`: tokens through the gateway's real
//! [`Authenticator`] (HS256, the secret below), and the claims' room
//! patterns through [`glob_match`] and room names through [`check_room_name`].
//!
//! - Nothing panics.
//! - A token authenticates only if it was signed with the secret: it has
//!   exactly three parts and the third is the base64url HMAC-SHA256, by the
//!   secret, of the first two. This is computed here with the `hmac` and
//!   `sha2` crates, not with jsonwebtoken, which the gateway uses.
//! - An authenticated token's header says `HS256` (the pinned algorithm;
//!   `none`, `RS256` and the rest are refused even when signed with the
//!   secret), its `exp` has not passed and its `nbf` has come (5 s leeway),
//!   its `sub` is a non-empty string, and the identity carries exactly its
//!   `sub`, `rooms`, `publish` and `info`.
//! - `glob_match` agrees with a plain dynamic-programming matcher on every
//!   (pattern, name) pair of the input, every pattern matches itself, and an
//!   identity's `may_join`/`may_publish_unjoined` agree with its patterns.
//! - `check_room_name` accepts exactly the non-empty names of at most
//!   `limits.max_room_name_bytes` bytes made of `A-Z a-z 0-9 _ - . : @ =`.
//!
//! # Input format
//!
//! One mode byte, then fields separated by `0xFF` (a byte that never occurs
//! in UTF-8, so every field but the last can be plain text): `f0`, `f1`,
//! `f2`, then any number of room names. The mode (first byte modulo 4) says
//! how the token is made of `f0`, `f1` and `f2`:
//!
//! | mode | token |
//! |---|---|
//! | 0 | `f0` itself: any text |
//! | 1 | `b64(f0).b64(f1).` + HMAC by the secret: really signed, so the claims are reached |
//! | 2 | `b64(f0).b64(f1).f2`: the signature part is any text |
//! | 3 | `b64(f0).b64(f1).` + HMAC by the key `f2` (not the secret, unless the fuzzer finds an equivalent HMAC key) |
//!
//! where `b64` is base64url without padding and `f0`, `f1` are the header and
//! payload JSON. Text is read as UTF-8, invalid sequences replaced.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use roomcast_gateway::auth::{AuthError, Authenticator, Identity};
use roomcast_gateway::config::{Config, Secret};
use roomcast_gateway::limits::{check_room_name, glob_match};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

/// The HS256 secret the fuzzed gateway is configured with.
pub const SECRET: &str = "roomcast-fuzz-jwt-secret-0123456789";

/// Leeway the gateway gives `exp` and `nbf` (auth.rs `LEEWAY_SECS`).
const LEEWAY_SECS: u64 = 5;

/// Patterns and room names compared pairwise, at most, per input.
const MAX_EACH: usize = 32;

/// Separates the fields of an input.
pub const SEP: u8 = 0xff;

/// How the token of an input is made; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Verbatim = 0,
    Signed = 1,
    Signature = 2,
    OtherKey = 3,
}

/// One decoded input.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub mode: Mode,
    pub f0: &'a [u8],
    pub f1: &'a [u8],
    pub f2: &'a [u8],
    pub rooms: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    pub fn parse(bytes: &'a [u8]) -> Input<'a> {
        let (mode, rest) = match bytes.split_first() {
            Some((m, rest)) => (*m, rest),
            None => (0, bytes),
        };
        let mode = match mode % 4 {
            0 => Mode::Verbatim,
            1 => Mode::Signed,
            2 => Mode::Signature,
            _ => Mode::OtherKey,
        };
        let mut fields = rest.split(|b| *b == SEP);
        let f0 = fields.next().unwrap_or_default();
        let f1 = fields.next().unwrap_or_default();
        let f2 = fields.next().unwrap_or_default();
        Input {
            mode,
            f0,
            f1,
            f2,
            rooms: fields.collect(),
        }
    }

    /// The bytes [`Input::parse`] reads back as this input (for the seeds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.mode as u8];
        for (i, field) in [self.f0, self.f1, self.f2]
            .into_iter()
            .chain(self.rooms.iter().copied())
            .enumerate()
        {
            if i > 0 {
                out.push(SEP);
            }
            out.extend_from_slice(field);
        }
        out
    }

    /// The token this input presents.
    pub fn token(&self) -> String {
        if self.mode == Mode::Verbatim {
            return String::from_utf8_lossy(self.f0).into_owned();
        }
        let signing_input = format!("{}.{}", b64(self.f0), b64(self.f1));
        let signature: Cow<str> = match self.mode {
            Mode::Signed => sign(SECRET.as_bytes(), &signing_input).into(),
            Mode::Signature => String::from_utf8_lossy(self.f2),
            _ => sign(self.f2, &signing_input).into(),
        };
        format!("{signing_input}.{signature}")
    }
}

/// base64url without padding, as in a JWT.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWT signature part of `signing_input` (`header.payload`): HMAC-SHA256
/// by `key`, base64url without padding.
pub fn sign(key: &[u8], signing_input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    b64(&mac.finalize().into_bytes())
}

/// The gateway's authenticator, configured as an operator would: HS256 with
/// `auth.jwt_secret`, no anonymous access.
fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut config = Config::default();
        config.auth.jwt_secret = Secret(SECRET.into());
        config.auth.jwt_algorithm = "HS256".into();
        config.auth.anonymous = Some(false);
        config.validate().expect("fuzz config is valid");
        Authenticator::from_config(&config).expect("HS256 authenticator")
    })
}

fn max_room_name_bytes() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| Config::default().limits.max_room_name_bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Runs the property on one input, panicking (a crash for libFuzzer) when it
/// does not hold.
pub fn check(bytes: &[u8]) {
    let input = Input::parse(bytes);
    let token = input.token();

    let before = now();
    let result = authenticator().authenticate(Some(&token), "fuzz-session");
    let after = now();
    match &result {
        Ok(identity) => check_authentic(&token, identity, before, after),
        Err(AuthError::Missing) => assert!(token.is_empty(), "a token was taken as missing"),
        Err(AuthError::Invalid(_)) => assert!(!token.is_empty(), "an empty token was invalid"),
    }

    // The claims' patterns, read here whether or not the token is valid, so
    // glob_match sees every pattern the fuzzer writes.
    let payload = match input.mode {
        Mode::Verbatim => token.split('.').nth(1).unwrap_or_default().to_string(),
        _ => b64(input.f1),
    };
    let claims: ClaimsPart = read_part(&payload).unwrap_or_default();
    let mut patterns: Vec<String> = Vec::new();
    for list in [&claims.rooms, &claims.publish] {
        if let Some(Value::Array(list)) = list {
            patterns.extend(list.iter().filter_map(|p| p.as_str().map(str::to_string)));
        }
    }
    // Pairs are quadratic: a bounded number keeps every run fast.
    patterns.truncate(MAX_EACH);
    let names: Vec<String> = input
        .rooms
        .iter()
        .take(MAX_EACH)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();

    for name in &names {
        check_name(name);
    }
    for pattern in &patterns {
        assert!(
            glob_match(pattern, pattern),
            "{pattern:?} does not match itself"
        );
        for name in names.iter().chain(&patterns) {
            assert_eq!(
                glob_match(pattern, name),
                glob_reference(pattern.as_bytes(), name.as_bytes()),
                "glob_match({pattern:?}, {name:?})"
            );
        }
    }
    if let Ok(identity) = &result {
        for name in &names {
            let may_join = identity
                .rooms
                .iter()
                .any(|p| glob_reference(p.as_bytes(), name.as_bytes()));
            assert_eq!(identity.may_join(name), may_join, "may_join({name:?})");
            let may_publish = identity
                .publish
                .iter()
                .any(|p| glob_reference(p.as_bytes(), name.as_bytes()));
            assert_eq!(
                identity.may_publish_unjoined(name),
                may_publish,
                "may_publish_unjoined({name:?})"
            );
        }
    }
}

/// What must hold of a token that authenticated; see the module docs.
fn check_authentic(token: &str, identity: &Identity, before: u64, after: u64) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "authenticated a token of {} parts",
        parts.len()
    );
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    assert_eq!(
        parts[2],
        sign(SECRET.as_bytes(), &signing_input),
        "authenticated a token not signed with the secret"
    );

    let header: HeaderPart = part(parts[0]);
    assert_eq!(
        header.alg.as_ref().and_then(Value::as_str),
        Some("HS256"),
        "authenticated a token whose header is not HS256: {:?}",
        header.alg
    );
    let claims: ClaimsPart = part(parts[1]);

    let sub = claims.sub.as_ref().and_then(Value::as_str);
    assert!(
        matches!(sub, Some(s) if !s.is_empty()),
        "authenticated a token without a non-empty sub: {claims:?}"
    );
    assert_eq!(Some(&*identity.user), sub, "identity user is not the sub");
    assert!(!identity.anonymous, "a token gave an anonymous identity");

    let exp = claims.exp.as_ref().and_then(Value::as_u64);
    assert!(
        matches!(exp, Some(exp) if exp.saturating_add(LEEWAY_SECS) >= before),
        "authenticated an expired token, or one without exp: {claims:?}"
    );
    // An nbf that is not a number in 0..2^64 (negative, too large, a
    // string...) cannot be read as a u64, and jsonwebtoken then takes the
    // token as having no nbf (docs/fuzzing.md, finding 5): nothing to check.
    if let Some(Value::Number(nbf)) = &claims.nbf {
        if let Some(nbf) = nbf.as_u64() {
            assert!(
                nbf <= after + LEEWAY_SECS,
                "authenticated a token before its nbf: {claims:?}"
            );
        } else if let Some(nbf) = nbf
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
        {
            assert!(
                nbf <= (after + LEEWAY_SECS) as f64 + 0.5,
                "authenticated a token before its nbf: {claims:?}"
            );
        }
    }

    let list = |key: &str, value: &Option<Value>| -> Vec<String> {
        match value {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .unwrap_or_else(|| {
                            panic!("authenticated a non-string in {key}: {claims:?}")
                        })
                        .to_string()
                })
                .collect(),
            Some(other) => panic!("authenticated {key} that is not a list: {other}"),
        }
    };
    assert_eq!(
        identity.rooms,
        list("rooms", &claims.rooms),
        "identity rooms"
    );
    assert_eq!(
        identity.publish,
        list("publish", &claims.publish),
        "identity publish"
    );
    assert_eq!(identity.info, claims.info, "identity info");
}

/// The header fields the oracle reads.
#[derive(Debug, Deserialize)]
struct HeaderPart {
    alg: Option<Value>,
}

/// The claims the oracle reads. Read like jsonwebtoken reads them (serde,
/// other fields skipped unparsed: a lone surrogate `\ud800` in a field
/// nobody reads is no error), but as plain JSON values, so that what the
/// gateway made of them can be checked. `null` reads as absent.
#[derive(Debug, Default, Deserialize)]
struct ClaimsPart {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    rooms: Option<Value>,
    publish: Option<Value>,
    info: Option<Value>,
}

/// A JSON object in base64url, as a JWT part; `None` if it is not one.
fn read_part<T: DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    // Only an object: serde would also read a struct from an array.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// A part of an authenticated token, which must be a JSON object.
fn part<T: DeserializeOwned>(part: &str) -> T {
    read_part(part).unwrap_or_else(|| {
        panic!("authenticated a token whose part {part:?} is not a base64url JSON object")
    })
}

fn check_name(name: &str) {
    let allowed = !name.is_empty()
        && name.len() <= max_room_name_bytes()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b));
    assert_eq!(
        check_room_name(name, max_room_name_bytes()).is_ok(),
        allowed,
        "check_room_name({name:?})"
    );
}

/// The meaning of a claim pattern, by dynamic programming over bytes (the
/// gateway matches bytes too; room names are ASCII): `*` any run, `?` one
/// byte, anything else itself. `row[j]`: the pattern so far matches the
/// first `j` bytes of the name.
fn glob_reference(pattern: &[u8], name: &[u8]) -> bool {
    let mut row = vec![false; name.len() + 1];
    let mut next = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pattern {
        if p == b'*' {
            // Any prefix matched so far, followed by any run.
            let mut seen = false;
            for j in 0..=name.len() {
                seen |= row[j];
                next[j] = seen;
            }
        } else {
            next[0] = false;
            for j in 1..=name.len() {
                next[j] = row[j - 1] && (p == b'?' || p == name[j - 1]);
            }
        }
        std::mem::swap(&mut row, &mut next);
    }
    row[name.len()]
}

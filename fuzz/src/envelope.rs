//! The property of `envelope_decode`: arbitrary bytes through
//! [`Envelope::decode`], the reader of everything that comes out of Redis.
//!
//! The decoder may refuse the bytes but must not panic, overflow the stack or
//! blow up memory. An envelope it accepts must encode, with the fixed-width
//! head in place (the publish script patches the offset and epoch at
//! [`OFFSET_POS`] and [`EPOCH_POS`]), and the encoding must decode to the same
//! envelope, up to the normalisations in [`normalised`]. Patching the head of
//! that encoding, as the publish script does, must give a valid envelope with
//! the new offset and epoch; and encoding is a fixed point after one round.

use roomcast_protocol::envelope::{Envelope, EPOCH_LEN, EPOCH_POS, OFFSET_POS};
use roomcast_protocol::{Data, Member};

/// Runs the property on one input, panicking (a crash for libFuzzer) when it
/// does not hold.
pub fn check(bytes: &[u8]) {
    let Ok(env) = Envelope::decode(bytes) else {
        return;
    };
    let encoded = env
        .encode()
        .unwrap_or_else(|e| panic!("a decoded envelope does not encode: {e}\n{env:?}"));
    check_head(&encoded, &env);

    let expected = normalised(env);
    let back = Envelope::decode(&encoded).unwrap_or_else(|e| {
        panic!("the encoding of a decoded envelope does not decode: {e}\n{expected:?}")
    });
    assert_eq!(back, expected, "envelope changed through encode/decode");
    let again = back
        .encode()
        .unwrap_or_else(|e| panic!("a re-decoded envelope does not encode: {e}\n{back:?}"));
    assert_eq!(
        again, encoded,
        "encoding is not a fixed point after one round"
    );

    // What the publish script does: write the offset it assigns and the
    // room's epoch into the head, then store and publish those bytes.
    let offset = back.offset ^ 0xa5a5_a5a5_a5a5_a5a5;
    let epoch = "fuzzEPOCH-0123_z";
    let mut patched = encoded;
    patched[OFFSET_POS..OFFSET_POS + 8].copy_from_slice(&offset.to_be_bytes());
    patched[EPOCH_POS..EPOCH_POS + EPOCH_LEN].copy_from_slice(epoch.as_bytes());
    let read = Envelope::decode(&patched)
        .unwrap_or_else(|e| panic!("a patched envelope does not decode: {e}\n{back:?}"));
    let mut want = back;
    want.offset = offset;
    want.epoch = epoch.to_string();
    assert_eq!(
        read, want,
        "patching the head changed more than offset and epoch"
    );
}

/// The head `encode` documents: an 11-entry map whose first two entries are
/// `offset` as a `uint 64` at [`OFFSET_POS`] and `epoch` as a 16-byte `str`
/// at [`EPOCH_POS`], zeros (`"0"` × 16) when the epoch is not 16 bytes.
fn check_head(encoded: &[u8], env: &Envelope) {
    assert!(encoded.len() >= EPOCH_POS + EPOCH_LEN, "head cut short");
    assert_eq!(encoded[0], 0x8b, "not an 11-entry fixmap");
    assert_eq!(&encoded[1..OFFSET_POS - 1], b"\xa6offset");
    assert_eq!(encoded[OFFSET_POS - 1], 0xcf, "offset is not a uint 64");
    assert_eq!(
        encoded[OFFSET_POS..OFFSET_POS + 8],
        env.offset.to_be_bytes(),
        "offset bytes"
    );
    assert_eq!(&encoded[OFFSET_POS + 8..EPOCH_POS - 1], b"\xa5epoch");
    assert_eq!(encoded[EPOCH_POS - 1], 0xb0, "epoch is not a 16-byte str");
    let epoch = &encoded[EPOCH_POS..EPOCH_POS + EPOCH_LEN];
    if env.epoch.len() == EPOCH_LEN {
        assert_eq!(epoch, env.epoch.as_bytes(), "epoch bytes");
    } else {
        assert_eq!(
            epoch, [b'0'; EPOCH_LEN],
            "a short or long epoch is not zeros"
        );
    }
}

/// The envelope a decoded one is expected to come back as. Everything is
/// kept except what the format cannot tell apart:
///
/// - an epoch that is not [`EPOCH_LEN`] bytes is written as zeros (documented
///   on [`Envelope::encode`]; the publish script fills in the real one);
/// - `data: Some(null)` and `data: None` are both `nil` on the wire, and read
///   back as `None`; every reader takes absent data as `null` (the gateway's
///   hub and the Redis broker, `unwrap_or(Data::Null)`). A decoded envelope
///   has `Some(null)` when its data was a NaN or infinite float, which a JSON
///   value cannot hold;
/// - a member's `info: Some(null)` is left out (`skip_serializing_if`) and
///   reads back as `None`, exactly as in client frames (docs/fuzzing.md).
pub fn normalised(mut env: Envelope) -> Envelope {
    if env.epoch.len() != EPOCH_LEN {
        env.epoch = "0".repeat(EPOCH_LEN);
    }
    if env.data == Some(Data::Null) {
        env.data = None;
    }
    for member in [&mut env.from, &mut env.member].into_iter().flatten() {
        normalise_member(member);
    }
    env
}

fn normalise_member(member: &mut Member) {
    if member.info == Some(Data::Null) {
        member.info = None;
    }
}

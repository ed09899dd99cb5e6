//! The properties the fuzz targets check.
//!
//! This module holds the one the two frame targets share (`frame_decode_json`,
//! `frame_decode_msgpack`); [`envelope`] and [`jwt`] hold those of
//! `envelope_decode` and `jwt_claims`.
//!
//! For any input bytes, decoded as a [`ClientFrame`] and as a [`ServerFrame`]:
//! a decoder may refuse them, but must not panic, overflow the stack or blow
//! up memory; and whatever it accepts must survive re-encoding, in the same
//! codec and in the other one (the gateway relays JSON clients' data to
//! MessagePack clients and back), decoding to an equal frame each time.

pub mod envelope;
pub mod jwt;

use std::fmt::Debug;

use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use serde::{de::DeserializeOwned, Serialize};

/// Runs the property on one input, panicking (which libFuzzer reports as a
/// crash) when it does not hold.
pub fn check(codec: Codec, bytes: &[u8]) {
    check_as::<ClientFrame>(codec, bytes);
    check_as::<ServerFrame>(codec, bytes);
}

fn check_as<T>(codec: Codec, bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(frame) = codec.decode::<T>(bytes) else {
        return;
    };
    for target in Codec::ALL {
        let encoded = target
            .encode(&frame)
            .unwrap_or_else(|e| panic!("{target:?} cannot encode a decoded frame: {e}\n{frame:?}"));
        let again: T = target.decode(&encoded).unwrap_or_else(|e| {
            panic!("{codec:?} frame re-encoded in {target:?} does not decode: {e}\n{frame:?}")
        });
        assert_eq!(again, frame, "{codec:?} frame changed through {target:?}");
    }
}

//! Arbitrary bytes through the JSON decoder; see `roomcast_fuzz::check`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_protocol::Codec;

fuzz_target!(|data: &[u8]| roomcast_fuzz::check(Codec::Json, data));

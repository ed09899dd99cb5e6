//! Arbitrary bytes through the inter-node envelope decoder; see
//! `roomcast_fuzz::envelope::check`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomcast_fuzz::envelope::check(data));

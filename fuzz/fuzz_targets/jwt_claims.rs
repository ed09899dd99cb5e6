//! Tokens through the gateway's HS256 `Authenticator`, claim patterns through
//! `glob_match`, room names through `check_room_name`; see
//! `roomcast_fuzz::jwt` for the input format and the property.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomcast_fuzz::jwt::check(data));

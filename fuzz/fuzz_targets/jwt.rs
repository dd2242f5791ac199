//! JWT claim decoding on arbitrary tokens: never panics; what it returns
//! is a JSON object; a token that verifies also decodes without a secret,
//! to the same claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taphook::derive::jwt;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let token = jwt::bearer(&text).unwrap_or(&text);
    let plain = jwt::claims(token, None);
    if let Some(claims) = &plain {
        assert!(claims.is_object());
    }
    if let Some(verified) = jwt::claims(token, Some(b"fuzz-secret")) {
        assert_eq!(Some(verified), plain);
    }
});

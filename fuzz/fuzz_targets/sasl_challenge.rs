//! A server's SASL error challenge (the `334`/`+` continuation): decoded, read and shown without
//! panicking, and shown clean.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpilot::sasl::Rejection;

fuzz_target!(|data: &[u8]| {
    let shown = Rejection::parse(data).to_string();
    assert!(!shown.chars().any(|c| c.is_control()));
    if let Some(r) = Rejection::decode(&String::from_utf8_lossy(data)) {
        let _ = r.token_invalid();
        let _ = r.to_string();
    }
});

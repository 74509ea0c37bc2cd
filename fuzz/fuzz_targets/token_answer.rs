//! A token endpoint's answer body, as mailpilot reads it: normalised (`expires_in`), then read as
//! a token response or an OAuth error, and every lifetime it yields formats as a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpilot::oauth::http::{normalize, MAX_LIFETIME};
use mailpilot::oauth::Refreshed;
use oauth2::basic::{BasicErrorResponse, BasicTokenResponse};

fuzz_target!(|data: &[u8]| {
    let body = normalize(data.to_vec());
    if let Ok(token) = serde_json::from_slice::<BasicTokenResponse>(&body) {
        let refreshed = Refreshed::from_response(&token);
        let lifetime = refreshed.expires_in.unwrap_or_default();
        assert!(lifetime <= MAX_LIFETIME);
        let _ = mailpilot::clock::rfc3339(u64::MAX.min(1_800_000_000 + lifetime.as_secs()));
    }
    if let Ok(error) = serde_json::from_slice::<BasicErrorResponse>(&body) {
        let text = mailpilot::error::clean(&error.to_string(), mailpilot::error::SERVER_TEXT_MAX);
        assert!(!text.chars().any(char::is_control));
    }
});

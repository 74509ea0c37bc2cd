//! A configuration file's text: every problem is reported, nothing panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mailpilot::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::from_text(&text, Path::new("/fuzz/config.toml"), false) {
        let _ = e.to_string();
    }
});

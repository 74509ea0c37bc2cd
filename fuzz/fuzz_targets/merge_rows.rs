//! Mail-merge data (CSV, JSON, JSON Lines; the first byte picks which): rows parse or fail with a
//! message, and a row's values become a message or a refusal — never a header injection.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mailpilot::compose::data::{list, parse_rows};
use mailpilot::compose::Draft;

fuzz_target!(|data: &[u8]| {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    let name = ["rows.csv", "rows.json", "rows.jsonl"][usize::from(*kind % 3)];
    let text = String::from_utf8_lossy(rest);
    let Ok(rows) = parse_rows(&text, Path::new(name)) else {
        return;
    };
    for row in rows.iter().take(20) {
        let vars = serde_json::Value::Object(row.vars.clone());
        let field = |k: &str| list(vars.get(k), k).unwrap_or_default();
        let draft = Draft {
            from: "r@example.com".into(),
            to: field("to"),
            cc: field("cc"),
            subject: vars.get("subject").and_then(|s| s.as_str()).unwrap_or("s").into(),
            text: Some("body".into()),
            ..Draft::default()
        };
        if let Ok(message) = draft.build() {
            // A built message has exactly the headers it was given: no value added another.
            let formatted = String::from_utf8_lossy(&message.formatted()).into_owned();
            let head = formatted.split("\r\n\r\n").next().unwrap_or_default();
            assert!(!head.contains("\nBcc:"), "{head}");
        }
    }
});

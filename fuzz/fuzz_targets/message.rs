//! An incoming message, as `poll` hands it over: the JSON document, the `--exec` environment and
//! the attachment file names are built without panicking, and are safe where they go.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mail_parser::{MessageParser, MimeHeaders};
use mailpilot::poll::handler::{exec_env, file_name, message_json};
use mailpilot::poll::Fetched;

fuzz_target!(|data: &[u8]| {
    let message = Fetched {
        account: "work",
        mailbox: "INBOX",
        uidvalidity: 1,
        uid: 7,
        raw: data,
        secret_env: None,
    };
    let parsed = MessageParser::default().parse(data);
    let json = message_json(&message, parsed.as_ref(), true, None).expect("no files to write");
    let _ = serde_json::to_string(&json).expect("encodes");
    for (_, value) in exec_env(&message, parsed.as_ref()) {
        assert!(!value.contains('\0') && !value.contains('\n'));
    }
    if let Some(m) = parsed.as_ref() {
        let mut taken = HashSet::new();
        for (i, part) in m.attachments().enumerate() {
            let name = file_name(part.attachment_name(), i + 1, &mut taken);
            assert!(!name.is_empty() && name.len() <= 100 && !name.contains('/'));
            assert!(!name.starts_with('.'));
        }
    }
});

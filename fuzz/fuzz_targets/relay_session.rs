//! A relay client's bytes: commands, SASL answers and DATA, in any order and split anywhere; the
//! session answers each with a reply and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpilot::config::FromPatterns;
use mailpilot::relay::proto::{Body, Checked, Sender, Session, Settings, Step};

fuzz_target!(|data: &[u8]| {
    let sender = Sender {
        user: None,
        account: "work".into(),
        allowed_from: FromPatterns::new(vec!["*@example.com".into()]),
    };
    let mut session = Session::new(Settings {
        hostname: "fuzz.test".into(),
        max_message_size: 4096,
        max_recipients: 3,
        starttls: true,
        tls: data.first().is_some_and(|b| b & 1 == 1),
        logins: true,
        auth_without_tls: data.first().is_some_and(|b| b & 2 == 2),
        anonymous: Some(sender.clone()),
    });
    let mut rest = data;
    let mut accept = false;
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match session.command(line.strip_suffix(b"\r").unwrap_or(line)) {
            Step::Reply(r) | Step::StartTls(r) => assert!(r.code >= 200),
            Step::Close(_) => return,
            Step::Login(_) => {
                accept = !accept;
                let result = if accept { Checked::Accepted(sender.clone()) } else { Checked::Refused };
                let _ = session.checked(result);
            }
            Step::Data(_) => {
                let mut body = Body::new(4096);
                let used = body.feed(rest);
                rest = &rest[used..];
                if !body.is_done() {
                    return;
                }
                let _ = session.data_end(&body);
            }
        }
    }
});

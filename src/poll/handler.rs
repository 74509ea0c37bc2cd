//! What happens to one fetched message: a JSON document for the sink (with attachments saved on
//! request), an `.eml` file, or a shell command with the raw message on stdin and its envelope in
//! the environment. A handler that fails stops the poll before the checkpoint moves.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use mail_parser::{MessageParser, MimeHeaders};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::{Handler, Sink};
use crate::error::clean;
use crate::output::JSON_SCHEMA_VERSION;

/// One fetched message and where it came from.
pub struct Fetched<'m> {
    /// The account's name.
    pub account: &'m str,
    /// The mailbox it was read from.
    pub mailbox: &'m str,
    /// The mailbox's UIDVALIDITY.
    pub uidvalidity: u32,
    /// Its UID.
    pub uid: u32,
    /// The raw RFC 5322 bytes.
    pub raw: &'m [u8],
    /// The environment variable holding the account's client secret, which an `--exec` command
    /// must not inherit.
    pub secret_env: Option<&'m str>,
}

/// The most of one header value passed to `--exec` in a variable: enough for any real subject or
/// address list, far below the kernel's limit for one variable (128 KiB).
const ENV_VALUE_MAX: usize = 4096;

/// A message as `poll` prints it (schema version 1). The bodies are borrowed from the message
/// when they need no decoding, so a 20 MB text is not copied to be printed.
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    version: u32,
    account: String,
    mailbox: String,
    uidvalidity: u32,
    uid: u32,
    message_id: Option<String>,
    date: Option<String>,
    from: Vec<String>,
    to: Vec<String>,
    cc: Vec<String>,
    subject: Option<String>,
    text: Option<Cow<'a, str>>,
    html: Option<Cow<'a, str>>,
    attachments: Vec<AttachmentJson>,
    size: usize,
}

/// An attachment in [`MessageJson`].
#[derive(Debug, Serialize)]
struct AttachmentJson {
    name: Option<String>,
    content_type: Option<String>,
    size: usize,
    saved_as: Option<String>,
}

/// Hands `message` to `handler`.
///
/// # Errors
/// The handler failed: the sink cannot write, a file cannot be saved, the command fails.
pub(super) async fn handle(
    message: &Fetched<'_>,
    handler: &Handler,
    sink: &dyn Sink,
) -> Result<()> {
    let parsed = MessageParser::default().parse(message.raw);
    match handler {
        Handler::Json {
            html,
            save_attachments,
        } => {
            let json = message_json(message, parsed.as_ref(), *html, save_attachments.as_deref())?;
            sink.message(&json)
        }
        Handler::Save(dir) => {
            let path = dir.join(format!("{}-{}.eml", message.uidvalidity, message.uid));
            crate::fsutil::write_atomic(&path, message.raw).with_context(|| {
                format!("failed to save UID {} to {}", message.uid, path.display())
            })
        }
        Handler::Exec(cmd) => exec(message, parsed.as_ref(), cmd).await,
    }
}

fn addresses(list: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    list.map(|a| {
        a.iter()
            .map(|addr| match (addr.name(), addr.address()) {
                (Some(n), Some(a)) => format!("{n} <{a}>"),
                (None, Some(a)) => a.to_string(),
                (Some(n), None) => n.to_string(),
                (None, None) => String::new(),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// `message` as the JSON handler prints it; with `save_attachments`, each attachment is written
/// there first (under a name from [`file_name`]).
///
/// # Errors
/// An attachment cannot be written.
pub fn message_json<'a>(
    message: &Fetched<'_>,
    parsed: Option<&'a mail_parser::Message<'a>>,
    with_html: bool,
    save_attachments: Option<&Path>,
) -> Result<MessageJson<'a>> {
    let attachments = match parsed {
        Some(m) => attachments(message, m, save_attachments)?,
        None => Vec::new(),
    };
    Ok(MessageJson {
        version: JSON_SCHEMA_VERSION,
        account: message.account.to_string(),
        mailbox: message.mailbox.to_string(),
        uidvalidity: message.uidvalidity,
        uid: message.uid,
        message_id: parsed.and_then(|m| m.message_id()).map(str::to_string),
        date: parsed.and_then(|m| m.date()).map(|d| d.to_rfc3339()),
        from: addresses(parsed.and_then(|m| m.from())),
        to: addresses(parsed.and_then(|m| m.to())),
        cc: addresses(parsed.and_then(|m| m.cc())),
        subject: parsed.and_then(|m| m.subject()).map(str::to_string),
        text: parsed
            .filter(|m| !m.text_body.is_empty())
            .and_then(|m| m.body_text(0)),
        html: if with_html {
            parsed
                .filter(|m| !m.html_body.is_empty())
                .and_then(|m| m.body_html(0))
        } else {
            None
        },
        attachments,
        size: message.raw.len(),
    })
}

/// The attachments' metadata, each written into `save_to` first when given.
fn attachments(
    message: &Fetched<'_>,
    parsed: &mail_parser::Message<'_>,
    save_to: Option<&Path>,
) -> Result<Vec<AttachmentJson>> {
    let (uidvalidity, uid) = (message.uidvalidity, message.uid);
    let mut attachments = Vec::new();
    let mut taken = HashSet::new();
    for (i, part) in parsed.attachments().enumerate() {
        let name = part.attachment_name().map(str::to_string);
        let saved_as = match save_to {
            Some(dir) => {
                let safe = file_name(name.as_deref(), i + 1, &mut taken);
                let path = dir.join(format!("{uidvalidity}-{uid}-{safe}"));
                crate::fsutil::write_atomic(&path, part.contents()).with_context(|| {
                    format!(
                        "failed to save an attachment of UID {uid} to {}",
                        path.display()
                    )
                })?;
                Some(path.display().to_string())
            }
            None => None,
        };
        attachments.push(AttachmentJson {
            name,
            content_type: part.content_type().map(|c| match c.subtype() {
                Some(sub) => format!("{}/{sub}", c.ctype()),
                None => c.ctype().to_string(),
            }),
            size: part.contents().len(),
            saved_as,
        });
    }
    Ok(attachments)
}

/// The longest attachment file name written (before the `<uidvalidity>-<uid>-` prefix): file
/// systems allow 255 bytes, and a sender may write anything.
const MAX_FILE_NAME: usize = 100;

/// A file name for attachment number `index` whose sender-given name is `given`: path separators
/// and control characters replaced, leading dots and spaces dropped (no hidden files, no `..`),
/// cut to `MAX_FILE_NAME` bytes keeping a short extension, and made distinct from the names
/// in `taken` (`report.pdf`, `report-2.pdf`).
pub fn file_name(given: Option<&str>, index: usize, taken: &mut HashSet<String>) -> String {
    let cleaned: String = given
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let base = if cleaned.is_empty() {
        format!("attachment-{index}")
    } else {
        cleaned.to_string()
    };
    let (stem, ext) = match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => {
            (stem.to_string(), format!(".{ext}"))
        }
        _ => (base.clone(), String::new()),
    };
    let fit = |stem: &str, suffix: &str| {
        let room = MAX_FILE_NAME.saturating_sub(ext.len() + suffix.len());
        let mut end = stem.len().min(room);
        while !stem.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{suffix}{ext}", &stem[..end])
    };
    let mut name = fit(&stem, "");
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = fit(&stem, &format!("-{n}"));
        n += 1;
    }
    name
}

/// Runs `cmd` with the raw message on stdin and its envelope in `MAILPILOT_*` variables.
async fn exec(
    message: &Fetched<'_>,
    parsed: Option<&mail_parser::Message<'_>>,
    cmd: &str,
) -> Result<()> {
    let uid = message.uid;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(exec_env(message, parsed))
        .stdin(Stdio::piped());
    if let Some(var) = message.secret_env {
        command.env_remove(var);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to start `{cmd}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input closes the pipe early; that is not a failure.
        match stdin.write_all(message.raw).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(e).with_context(|| format!("failed to write UID {uid} to `{cmd}`"))
            }
            _ => {}
        }
        drop(stdin);
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("failed to wait for `{cmd}`"))?;
    if !status.success() {
        bail!("the --exec command `{cmd}` failed for UID {uid} ({status})");
    }
    Ok(())
}

/// The `MAILPILOT_*` variables an `--exec` command gets for `message`. Values come from the
/// message: no NUL (it cannot be passed), no line breaks or terminal escapes, bounded.
pub fn exec_env(
    message: &Fetched<'_>,
    parsed: Option<&mail_parser::Message<'_>>,
) -> Vec<(&'static str, String)> {
    let uid = message.uid;
    let one_line = |s: String| clean(&s, ENV_VALUE_MAX);
    let header = |value: Option<&str>| value.unwrap_or_default().to_string();
    let env = [
        ("MAILPILOT_ACCOUNT", message.account.to_string()),
        ("MAILPILOT_MAILBOX", message.mailbox.to_string()),
        ("MAILPILOT_UIDVALIDITY", message.uidvalidity.to_string()),
        ("MAILPILOT_UID", uid.to_string()),
        (
            "MAILPILOT_MESSAGE_ID",
            header(parsed.and_then(|m| m.message_id())),
        ),
        (
            "MAILPILOT_FROM",
            addresses(parsed.and_then(|m| m.from())).join(", "),
        ),
        (
            "MAILPILOT_TO",
            addresses(parsed.and_then(|m| m.to())).join(", "),
        ),
        (
            "MAILPILOT_SUBJECT",
            header(parsed.and_then(|m| m.subject())),
        ),
        (
            "MAILPILOT_DATE",
            parsed
                .and_then(|m| m.date())
                .map(|d| d.to_rfc3339())
                .unwrap_or_default(),
        ),
    ];
    env.into_iter().map(|(k, v)| (k, one_line(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are safe, short, distinct and never hidden or `..`.
    #[test]
    fn attachment_file_names() {
        let mut taken = HashSet::new();
        assert_eq!(file_name(Some("report.pdf"), 1, &mut taken), "report.pdf");
        assert_eq!(file_name(Some("report.pdf"), 2, &mut taken), "report-2.pdf");
        assert_eq!(file_name(Some("report.pdf"), 3, &mut taken), "report-3.pdf");
        assert_eq!(
            file_name(Some("../../etc/passwd"), 4, &mut taken),
            "_.._etc_passwd"
        );
        assert_eq!(file_name(Some(".."), 5, &mut taken), "attachment-5");
        assert_eq!(file_name(Some(".bashrc"), 6, &mut taken), "bashrc");
        assert_eq!(file_name(None, 7, &mut taken), "attachment-7");
        assert_eq!(
            file_name(Some("a\0b\r\nc.txt"), 8, &mut taken),
            "a_b__c.txt"
        );
        let long = format!("{}.pdf", "é".repeat(300));
        let name = file_name(Some(&long), 9, &mut taken);
        assert!(
            name.len() <= MAX_FILE_NAME && name.ends_with(".pdf"),
            "{name}"
        );
        let again = file_name(Some(&long), 10, &mut taken);
        assert!(
            again.len() <= MAX_FILE_NAME && again.ends_with("-2.pdf"),
            "{again}"
        );
    }

    proptest::proptest! {
        /// Any sender-given name becomes a short, safe, visible, distinct file name.
        #[test]
        fn file_names_are_safe(names in proptest::collection::vec(proptest::option::of(".*"), 1..8)) {
            let mut taken = HashSet::new();
            let mut made = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let f = file_name(name.as_deref(), i + 1, &mut taken);
                proptest::prop_assert!(!f.is_empty() && f.len() <= MAX_FILE_NAME, "{f:?}");
                proptest::prop_assert!(!f.contains('/') && !f.starts_with('.'), "{f:?}");
                proptest::prop_assert!(!f.chars().any(char::is_control), "{f:?}");
                proptest::prop_assert!(!made.contains(&f), "{f:?} twice");
                made.push(f);
            }
        }

        /// `--exec` values never carry NUL, line breaks or escapes, whatever the message.
        #[test]
        fn exec_env_is_clean(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let message = Fetched { account: "a", mailbox: "INBOX", uidvalidity: 1, uid: 1, raw: &raw, secret_env: None };
            let parsed = MessageParser::default().parse(&raw);
            for (_, value) in exec_env(&message, parsed.as_ref()) {
                proptest::prop_assert!(!value.chars().any(char::is_control), "{value:?}");
                proptest::prop_assert!(value.len() <= ENV_VALUE_MAX + 3);
            }
            let _ = message_json(&message, parsed.as_ref(), true, None);
        }
    }
}

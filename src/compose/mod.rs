//! Building messages: addresses, headers, text/HTML alternatives and attachments → an RFC 5322
//! message (lettre's `Message`). Validates everything a user or a data file controls: addresses
//! parse, header values carry no CR/LF, attachments exist.

pub mod data;
pub mod mime;
pub mod submission;
pub mod template;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use crate::error::UsageError;

/// What a message should contain, before it is built.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// `From` (a mailbox: `a@b` or `Name <a@b>`).
    pub from: String,
    /// `To` recipients.
    pub to: Vec<String>,
    /// `Cc` recipients.
    pub cc: Vec<String>,
    /// `Bcc` recipients (in the envelope only, never in the headers).
    pub bcc: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body (sent as an alternative to the text).
    pub html: Option<String>,
    /// Files to attach.
    pub attachments: Vec<PathBuf>,
    /// Extra headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// The Message-ID (with angle brackets); generated when `None`.
    pub message_id: Option<String>,
}

/// Headers mailpilot sets itself; `--header` may not replace them.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
];

/// Parses `Name: value` (from `--header`).
///
/// # Errors
/// [`UsageError`] for a malformed line or a reserved name.
pub fn parse_header(line: &str) -> Result<(String, String)> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(UsageError(format!("--header {line:?}: expected \"Name: value\"")).into());
    };
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(UsageError(format!("--header {line:?}: {name:?} is not a header name")).into());
    }
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(UsageError(format!(
            "--header {line:?}: {name} is set by mailpilot; use its own option"
        ))
        .into());
    }
    Ok((name.to_string(), value.trim().to_string()))
}

fn mailbox(value: &str, what: &str) -> Result<Mailbox> {
    if value.contains(['\r', '\n']) {
        return Err(UsageError(format!("{what} {value:?} contains a line break")).into());
    }
    value
        .parse::<Mailbox>()
        .map_err(|e| UsageError(format!("{what} {value:?} is not a valid address ({e})")).into())
}

fn single_line(value: &str, what: &str) -> Result<()> {
    if value.contains(['\r', '\n']) {
        return Err(UsageError(format!(
            "{what} contains a line break (header injection is refused)"
        ))
        .into());
    }
    Ok(())
}

impl Draft {
    /// Builds the message.
    ///
    /// # Errors
    /// [`UsageError`] for invalid addresses or header values; I/O errors naming unreadable
    /// attachments.
    pub fn build(&self) -> Result<Message> {
        let builder = self.headers()?;
        let message = match self.body()? {
            Body::Single(part) => builder.singlepart(part),
            Body::Multi(part) => builder.multipart(part),
        };
        message.context("failed to build the message")
    }

    /// Checks that the message would build — recipients, addresses, header values, readable
    /// attachments — without encoding its body or reading its attachments: what a merge does for
    /// every row before it sends the first.
    ///
    /// # Errors
    /// As [`Draft::build`].
    pub fn check(&self) -> Result<()> {
        let builder = self.headers()?;
        for path in &self.attachments {
            let file = std::fs::File::open(path)
                .with_context(|| format!("failed to read attachment {}", path.display()))?;
            let meta = file
                .metadata()
                .with_context(|| format!("failed to read attachment {}", path.display()))?;
            if !meta.is_file() {
                bail!("attachment {} is not a regular file", path.display());
            }
            if path.file_name().is_none() {
                bail!("attachment {} has no file name", path.display());
            }
        }
        builder
            .body(String::new())
            .context("failed to build the message")?;
        Ok(())
    }

    /// The message's headers, each checked.
    fn headers(&self) -> Result<lettre::message::MessageBuilder> {
        if self.to.is_empty() && self.cc.is_empty() && self.bcc.is_empty() {
            return Err(UsageError("no recipients: give --to, --cc or --bcc".into()).into());
        }
        single_line(&self.subject, "the subject")?;
        let mut builder = Message::builder()
            .from(mailbox(&self.from, "from address")?)
            .subject(self.subject.clone())
            .message_id(self.message_id.clone())
            .user_agent(concat!("mailpilot/", env!("CARGO_PKG_VERSION")).to_string());
        for to in &self.to {
            builder = builder.to(mailbox(to, "--to")?);
        }
        for cc in &self.cc {
            builder = builder.cc(mailbox(cc, "--cc")?);
        }
        for bcc in &self.bcc {
            builder = builder.bcc(mailbox(bcc, "--bcc")?);
        }
        for (name, value) in &self.headers {
            single_line(value, &format!("header {name}"))?;
            let name = HeaderName::new_from_ascii(name.clone())
                .map_err(|_| UsageError(format!("{name:?} is not a header name")))?;
            builder = builder.raw_header(HeaderValue::new(name, value.clone()));
        }
        Ok(builder)
    }

    fn body(&self) -> Result<Body> {
        let text = self.text.clone();
        let content = match (text, self.html.clone()) {
            (Some(text), Some(html)) => Body::Multi(MultiPart::alternative_plain_html(text, html)),
            (None, Some(html)) => Body::Single(SinglePart::html(html)),
            (text, None) => Body::Single(SinglePart::plain(text.unwrap_or_default())),
        };
        if self.attachments.is_empty() {
            return Ok(content);
        }
        let mut mixed = match content {
            Body::Single(part) => MultiPart::mixed().singlepart(part),
            Body::Multi(part) => MultiPart::mixed().multipart(part),
        };
        for path in &self.attachments {
            let bytes = std::fs::read(path)
                .with_context(|| format!("failed to read attachment {}", path.display()))?;
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                bail!("attachment {} has no file name", path.display());
            };
            let content_type =
                ContentType::parse(mime::guess(path)).context("internal MIME type table entry")?;
            mixed = mixed.singlepart(Attachment::new(name).body(bytes, content_type));
        }
        Ok(Body::Multi(mixed))
    }
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            from: "Reports <reports@example.com>".into(),
            to: vec!["a@example.com".into()],
            bcc: vec!["hidden@example.com".into()],
            subject: "Daily report".into(),
            text: Some("hello".into()),
            html: Some("<p>hello</p>".into()),
            ..Draft::default()
        }
    }

    /// Text + HTML become multipart/alternative; Bcc stays out of the headers but in the envelope.
    #[test]
    fn alternative_and_bcc() {
        let m = draft().build().expect("build");
        let text = String::from_utf8(m.formatted()).expect("utf8");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("Subject: Daily report"));
        assert!(!text.contains("hidden@example.com"));
        assert_eq!(m.envelope().to().len(), 2);
        assert!(text.contains("Message-ID: <"));
    }

    /// Header injection through the subject, an address or a custom header is refused.
    #[test]
    fn refuses_injection() {
        let mut d = draft();
        d.subject = "hi\r\nBcc: evil@example.com".into();
        assert!(d.build().is_err());
        let mut d = draft();
        d.to = vec!["a@example.com\r\nBcc: evil@example.com".into()];
        assert!(d.build().is_err());
        let mut d = draft();
        d.headers = vec![("X-Tag".into(), "a\nb".into())];
        assert!(d.build().is_err());
        assert!(parse_header("Subject: x").is_err());
        assert!(parse_header("no colon").is_err());
        assert_eq!(
            parse_header("X-Job: nightly").expect("ok"),
            ("X-Job".into(), "nightly".into())
        );
    }
}

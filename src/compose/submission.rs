//! What a program hands `/usr/sbin/sendmail`, made into a message the account may send: the options
//! real callers pass (cron, cronie, `mail(1)`, PHP, logwatch…), recipients from the arguments or
//! the headers (`-t`), local names mapped through `[sendmail] aliases`, Bcc removed, Date and
//! Message-ID added when missing, and From rewritten as `rewrite_from` says.
//!
//! Pure: no files, no network. The message text stays as the caller wrote it except for the
//! header lines named here.

use mail_parser::MessageParser;

use crate::config::{RewriteFrom, Sendmail};
use crate::error::UsageError;

/// What the caller asked for on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// `-t`: recipients from To, Cc and Bcc (added to any given as arguments, as Postfix does).
    pub recipients_from_headers: bool,
    /// `-f ADDR` / `-r ADDR`: the sender the caller wanted (the envelope sender is always the
    /// account's mailbox: providers refuse others).
    pub sender: Option<String>,
    /// `-F NAME`: the sender's full name, used when From is written by mailpilot.
    pub full_name: Option<String>,
    /// Recipients given as arguments (each may be a comma-separated list).
    pub recipients: Vec<String>,
    /// `-v`.
    pub verbose: bool,
    /// Options accepted and ignored (for a debug line), as written.
    pub ignored: Vec<String>,
}

/// Single-letter flags that take no value and may be bundled (`-ti`).
const FLAGS: &str = "tivmnUG";
/// Options that take a value, attached (`-fuser`) or as the next argument (`-f user`).
const WITH_VALUE: &str = "frFBNoORVLXChqbde";

/// Reads sendmail's command line (the arguments after the program name).
///
/// # Errors
/// [`UsageError`] for a mode mailpilot does not offer (`-bs`, `-bp`, `-q`…) or an option missing
/// its value.
pub fn parse_args(args: &[String]) -> Result<SendmailArgs, UsageError> {
    let mut parsed = SendmailArgs::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.recipients.extend(args[i..].iter().cloned());
            break;
        }
        let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) else {
            parsed.recipients.push(arg.clone());
            continue;
        };
        let letter = body.chars().next().unwrap_or_default();
        if FLAGS.contains(letter) && body.chars().all(|c| FLAGS.contains(c)) {
            for c in body.chars() {
                match c {
                    't' => parsed.recipients_from_headers = true,
                    'v' => parsed.verbose = true,
                    // -i: a lone dot does not end the message (always so: stdin is read whole).
                    _ => parsed.ignored.push(format!("-{c}")),
                }
            }
            continue;
        }
        if !WITH_VALUE.contains(letter) {
            parsed.ignored.push(arg.clone());
            continue;
        }
        let attached = &body[letter.len_utf8()..];
        let value = if attached.is_empty() {
            let Some(next) = args.get(i) else {
                return Err(UsageError(format!(
                    "sendmail: option -{letter} needs a value"
                )));
            };
            i += 1;
            next.clone()
        } else {
            attached.to_string()
        };
        option(&mut parsed, letter, value)?;
    }
    Ok(parsed)
}

fn option(parsed: &mut SendmailArgs, letter: char, value: String) -> Result<(), UsageError> {
    match letter {
        'f' | 'r' => parsed.sender = Some(value),
        'F' => parsed.full_name = Some(value),
        'b' => match value.as_str() {
            "m" => {}
            "p" => {
                return Err(UsageError(
                    "sendmail -bp: list the queue with `mailpilot queue list`".into(),
                ))
            }
            other => {
                return Err(UsageError(format!(
                    "sendmail -b{other}: mailpilot only takes a message on stdin (-bm)"
                )))
            }
        },
        'q' => {
            return Err(UsageError(
                "sendmail -q: deliver the queue with `mailpilot queue flush`".into(),
            ))
        }
        // -oi, -oem, -odi, -B8BITMIME, -N never, -O…: accepted, nothing to do.
        _ => parsed.ignored.push(format!("-{letter}{value}")),
    }
    Ok(())
}

/// A message ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The From address the message carries (the account's when it was rewritten).
    pub from: String,
    /// Envelope recipients, mapped and de-duplicated.
    pub recipients: Vec<String>,
    /// The message with its header changes.
    pub message: Vec<u8>,
}

/// What [`prepare`] needs besides the message.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// `[sendmail]`.
    pub settings: &'a Sendmail,
    /// The account's From address (`ops@example.com`).
    pub account_from: &'a str,
    /// `Date:` for a message without one (RFC 5322 text).
    pub date: String,
    /// A unique left part for a Message-ID.
    pub unique: String,
}

/// The largest header block read (real ones are a few KB).
const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Makes `raw` (as the caller wrote it) into a [`Submission`].
///
/// # Errors
/// [`UsageError`]: no recipient, a local name without an alias, a header block too large.
pub fn prepare(
    raw: &[u8],
    args: &SendmailArgs,
    ctx: &Context<'_>,
) -> Result<Submission, UsageError> {
    let (headers, body) = split(raw);
    if headers.len() > MAX_HEADER_BYTES {
        return Err(UsageError(format!(
            "the message's header block is over {} KiB",
            MAX_HEADER_BYTES / 1024
        )));
    }
    let eol: &[u8] = if headers.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let fields = fields(headers);
    let recipients = recipients(headers, args, ctx.settings)?;
    let mut out = Vec::with_capacity(raw.len() + 256);
    let has = |name: &str| fields.iter().any(|f| f.is(name));
    let from = fields.iter().find(|f| f.is("from"));
    let rewrite = match (ctx.settings.rewrite_from, from) {
        (_, None) => true,
        (RewriteFrom::Always, Some(_)) => true,
        (RewriteFrom::Auto, Some(f)) => is_local(&f.value()),
        (RewriteFrom::Never, Some(_)) => false,
    };
    if rewrite {
        let name = args
            .full_name
            .clone()
            .or_else(|| from.map(|f| f.value()))
            .map(|n| n.replace(['"', '\\', '\r', '\n'], " ").trim().to_string())
            .filter(|n| !n.is_empty());
        let line = match name {
            Some(n) => format!("From: \"{n}\" <{}>", ctx.account_from),
            None => format!("From: {}", ctx.account_from),
        };
        push_line(&mut out, &line, eol);
    }
    if !has("date") {
        push_line(&mut out, &format!("Date: {}", ctx.date), eol);
    }
    if !has("message-id") {
        let domain = ctx
            .account_from
            .rsplit_once('@')
            .map_or("mailpilot.invalid", |(_, d)| d);
        push_line(
            &mut out,
            &format!("Message-ID: <{}@{domain}>", ctx.unique),
            eol,
        );
    }
    for f in &fields {
        if f.is("bcc") || (rewrite && f.is("from")) {
            continue;
        }
        out.extend_from_slice(f.raw);
    }
    out.extend_from_slice(eol);
    out.extend_from_slice(body);
    let from = match from {
        Some(f) if !rewrite => address_of(&f.value()).to_string(),
        _ => ctx.account_from.to_string(),
    };
    Ok(Submission {
        from,
        recipients,
        message: out,
    })
}

/// The envelope recipients: the arguments (comma-separated lists too) and, with `-t`, To, Cc and
/// Bcc; local names mapped; each once.
fn recipients(
    headers: &[u8],
    args: &SendmailArgs,
    settings: &Sendmail,
) -> Result<Vec<String>, UsageError> {
    let mut wanted: Vec<String> = args
        .recipients
        .iter()
        .flat_map(|r| r.split(','))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    if args.recipients_from_headers {
        wanted.extend(header_addresses(headers));
    }
    let mut recipients = Vec::new();
    for r in wanted {
        let mapped = map_local(&r, settings)?;
        if !recipients.contains(&mapped) {
            recipients.push(mapped);
        }
    }
    if recipients.is_empty() {
        return Err(UsageError(
            "sendmail: no recipients (give them as arguments, or -t to read To, Cc and Bcc)".into(),
        ));
    }
    Ok(recipients)
}

fn push_line(out: &mut Vec<u8>, line: &str, eol: &[u8]) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(eol);
}

/// The header block (without the empty line) and the body. Text before the first line that is not
/// a header field counts as body (a message with no headers at all).
fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    while at < raw.len() {
        let end = raw[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |i| at + i + 1);
        let line = &raw[at..end];
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            return (&raw[..at], &raw[end..]);
        }
        let continuation = matches!(text[0], b' ' | b'\t') && at > 0;
        let field = text
            .iter()
            .position(|b| *b == b':')
            .is_some_and(|c| c > 0 && text[..c].iter().all(|b| b.is_ascii_graphic()));
        if !continuation && !field {
            return (&raw[..at], &raw[at..]);
        }
        at = end;
    }
    (raw, &[])
}

/// One header field with its continuation lines, as written.
struct Field<'a> {
    raw: &'a [u8],
}

impl Field<'_> {
    fn name(&self) -> String {
        let colon = self.raw.iter().position(|b| *b == b':').unwrap_or(0);
        String::from_utf8_lossy(&self.raw[..colon])
            .trim()
            .to_ascii_lowercase()
    }

    fn is(&self, name: &str) -> bool {
        self.name() == name
    }

    /// The value, unfolded.
    fn value(&self) -> String {
        let colon = self
            .raw
            .iter()
            .position(|b| *b == b':')
            .map_or(0, |c| c + 1);
        String::from_utf8_lossy(&self.raw[colon..])
            .split(['\r', '\n'])
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_string()
    }
}

fn fields(headers: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < headers.len() {
        let end = headers[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(headers.len(), |i| at + i + 1);
        if at > start && !matches!(headers[at], b' ' | b'\t') {
            out.push(Field {
                raw: &headers[start..at],
            });
            start = at;
        }
        at = end;
    }
    if at > start {
        out.push(Field {
            raw: &headers[start..at],
        });
    }
    out
}

/// The addresses of To, Cc and Bcc.
fn header_addresses(headers: &[u8]) -> Vec<String> {
    let mut block = headers.to_vec();
    block.extend_from_slice(b"\r\n\r\n");
    let Some(parsed) = MessageParser::default().parse_headers(&block[..]) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for list in [parsed.to(), parsed.cc(), parsed.bcc()]
        .into_iter()
        .flatten()
    {
        for addr in list.iter() {
            // A bare local name (`To: root`) parses as a name without an address.
            let local = addr
                .name()
                .filter(|n| !n.trim().is_empty() && !n.contains(char::is_whitespace));
            if let Some(a) = addr.address().or(local) {
                found.push(a.trim().to_string());
            }
        }
    }
    found
}

/// A local name (`root`, `root@myhost`) as its alias; a full address as it is.
fn map_local(recipient: &str, settings: &Sendmail) -> Result<String, UsageError> {
    let (local, domain) = recipient.rsplit_once('@').unwrap_or((recipient, ""));
    let local = local.trim_matches(['<', '>']);
    let domain = domain.trim_matches(['<', '>']);
    if domain.contains('.') {
        return Ok(format!("{local}@{domain}"));
    }
    settings
        .aliases
        .get(local)
        .or_else(|| settings.aliases.get("default"))
        .cloned()
        .ok_or_else(|| {
            UsageError(format!(
                "sendmail: no address for the local name \"{local}\": add it under [sendmail.aliases] (`{local} = \"you@example.com\"`, or `default = …` for every local name)"
            ))
        })
}

/// The address in a From value (`Name <a@x>`, `a@x`): inside `<…>`, else its first word.
pub fn address_of(from: &str) -> &str {
    match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from.split_whitespace().next().unwrap_or(""),
    }
}

/// Whether a From value names a local sender: no address, or a domain without a dot.
fn is_local(from: &str) -> bool {
    match address_of(from).rsplit_once('@') {
        Some((_, domain)) => !domain.contains('.'),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> SendmailArgs {
        let v: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse_args(&v).expect(line)
    }

    /// The exact argument lists of Debian's cron, cronie, mail(1) and PHP.
    #[test]
    fn real_callers() {
        let cron = args("-FCronDaemon -i -B8BITMIME -oem root");
        assert_eq!(cron.full_name.as_deref(), Some("CronDaemon"));
        assert_eq!(cron.recipients, ["root"]);
        assert!(!cron.recipients_from_headers);
        let cronie = args("-FCronDaemon -i -odi -oem -oi -t -f root");
        assert!(cronie.recipients_from_headers);
        assert_eq!(cronie.sender.as_deref(), Some("root"));
        assert!(cronie.recipients.is_empty());
        let mailx = args("-i -- ops@example.com");
        assert_eq!(mailx.recipients, ["ops@example.com"]);
        let php = args("-t -i");
        assert!(php.recipients_from_headers && php.recipients.is_empty());
        assert!(args("-ti").recipients_from_headers);
        assert_eq!(
            args("-N never -v a@example.com").recipients,
            ["a@example.com"]
        );
        for refused in ["-bs", "-bp", "-q"] {
            assert!(parse_args(&[refused.to_string()]).is_err(), "{refused}");
        }
        assert!(parse_args(&["-f".to_string()]).is_err());
    }

    fn ctx(settings: &Sendmail) -> Context<'_> {
        Context {
            settings,
            account_from: "ops@example.com",
            date: "Tue, 01 Dec 2026 08:00:00 +0000".into(),
            unique: "u1".into(),
        }
    }

    /// cron's message: root mapped, From rewritten (the caller's name kept), Date and Message-ID
    /// added, the body untouched.
    #[test]
    fn cron_message() {
        let settings = Sendmail {
            aliases: [("root".to_string(), "admin@example.com".to_string())].into(),
            ..Sendmail::default()
        };
        let raw = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> run-parts\n\n.hidden\nbody\n";
        let s = prepare(
            raw,
            &args("-FCronDaemon -i -B8BITMIME -oem root"),
            &ctx(&settings),
        )
        .expect("prepare");
        assert_eq!(s.recipients, ["admin@example.com"]);
        assert_eq!(s.from, "ops@example.com");
        let text = String::from_utf8(s.message).expect("utf8");
        assert_eq!(
            text,
            "From: \"CronDaemon\" <ops@example.com>\nDate: Tue, 01 Dec 2026 08:00:00 +0000\nMessage-ID: <u1@example.com>\nTo: root\nSubject: Cron <root@vm> run-parts\n\n.hidden\nbody\n"
        );
    }

    /// -t reads To, Cc and Bcc (folded, with names), removes Bcc, keeps a real From.
    #[test]
    fn recipients_from_headers() {
        let settings = Sendmail::default();
        let raw = b"From: App <app@example.com>\r\nTo: A <a@example.com>,\r\n b@example.com\r\nBcc: hidden@example.com\r\nDate: x\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n";
        let s = prepare(raw, &args("-t -i"), &ctx(&settings)).expect("prepare");
        assert_eq!(
            s.recipients,
            ["a@example.com", "b@example.com", "hidden@example.com"]
        );
        assert_eq!(s.from, "app@example.com");
        let text = String::from_utf8(s.message).expect("utf8");
        assert!(!text.contains("hidden"), "{text}");
        assert!(text.starts_with("From: App <app@example.com>\r\nTo: A <a@example.com>,\r\n b@example.com\r\nDate: x"), "{text}");
    }

    /// A local name without an alias is refused with the fix; `default` catches every local name.
    #[test]
    fn local_names() {
        let none = Sendmail::default();
        let e =
            prepare(b"Subject: x\n\nx\n", &args("www-data"), &ctx(&none)).expect_err("no alias");
        assert!(e.0.contains("[sendmail.aliases]"), "{}", e.0);
        let with_default = Sendmail {
            aliases: [("default".to_string(), "ops@example.com".to_string())].into(),
            ..Sendmail::default()
        };
        let s = prepare(
            b"Subject: x\n\nx\n",
            &args("www-data root@vm"),
            &ctx(&with_default),
        )
        .expect("default");
        assert_eq!(s.recipients, ["ops@example.com"]);
        assert!(
            prepare(b"Subject: x\n\nx\n", &args("-t"), &ctx(&with_default)).is_err(),
            "no recipients"
        );
        let s = prepare(b"To: root\n\nx\n", &args("-t"), &ctx(&with_default)).expect("bare name");
        assert_eq!(s.recipients, ["ops@example.com"]);
    }

    proptest::proptest! {
        /// Any input and arguments: a submission or a refusal, never a panic; the body is kept.
        #[test]
        fn any_message_is_handled(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..300), t in proptest::bool::ANY) {
            let settings = Sendmail {
                aliases: [("default".to_string(), "ops@example.com".to_string())].into(),
                ..Sendmail::default()
            };
            let a = SendmailArgs { recipients_from_headers: t, recipients: vec!["root".into()], ..SendmailArgs::default() };
            let s = prepare(&raw, &a, &ctx(&settings)).expect("root maps to the default");
            let (_, body) = split(&raw);
            proptest::prop_assert!(s.message.ends_with(body));
        }
    }
}

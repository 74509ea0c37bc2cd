//! The SMTP submission server's protocol (RFC 5321, 6409, 4954, 3207, 2920, 1870, 6152) without
//! I/O: [`Session`] takes one command line at a time and says what to do ([`Step`]); [`Body`]
//! decodes DATA (dot-unstuffing, the end marker, the size limit) from whatever bytes arrive.
//!
//! Pure: the caller reads and writes, checks passwords, and hands accepted messages to the outbox.
//! Nothing here trusts the client: every line is bounded by the caller, every address checked, and
//! every refusal has its RFC reply code.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::FromPatterns;
use crate::secret::Secret;

/// The longest command line taken (RFC 5321 says 512; AUTH PLAIN with a long password needs more).
pub const MAX_LINE: usize = 4096;
/// The longest address taken (RFC 5321 §4.5.3.1.3: a path is at most 256 octets).
const MAX_ADDRESS: usize = 254;
/// After this many refused commands the client is told to go (a client that only sends junk).
const MAX_ERRORS: u32 = 20;

/// A reply: a code and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text lines (the first carries the enhanced status code, where there is one).
    pub lines: Vec<String>,
}

impl Reply {
    fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// The reply as the client receives it (`250-…` continuation lines, CRLF).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes());
        }
    }

    /// Whether this refuses (4xx or 5xx).
    pub fn is_refusal(&self) -> bool {
        self.code >= 400
    }
}

/// Who sends: a relay user after AUTH, or the loopback client allowed without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The relay user (`None`: an unauthenticated loopback client).
    pub user: Option<String>,
    /// The account the mail goes out through.
    pub account: String,
    /// The From addresses this sender may use.
    pub allowed_from: FromPatterns,
}

/// What one connection may do, decided by the listener and the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Advertised as SIZE; larger messages are refused (552).
    pub max_message_size: u64,
    /// Recipients per message; more get 452.
    pub max_recipients: usize,
    /// STARTTLS is offered (a certificate is configured and the connection is not TLS yet).
    pub starttls: bool,
    /// The connection is TLS already (implicit TLS listener).
    pub tls: bool,
    /// There are relay users (without them AUTH is never offered).
    pub logins: bool,
    /// AUTH is offered before TLS (only on a loopback listener of a relay without a certificate).
    pub auth_without_tls: bool,
    /// Who may send without AUTH (a loopback client, `allow_loopback_without_auth`).
    pub anonymous: Option<Sender>,
}

/// A name and password from AUTH PLAIN or LOGIN, for the caller to check.
#[derive(Debug)]
pub struct Login {
    /// The user name as sent (bounded, printable).
    pub user: String,
    /// The password.
    pub password: Secret,
}

/// What the caller found when it checked a [`Login`].
#[derive(Debug)]
pub enum Checked {
    /// Right name and password: this user sends.
    Accepted(Sender),
    /// Wrong name or password.
    Refused,
    /// Too many failed logins from this client lately; no password was checked.
    Throttled,
}

/// A message the client finished (after DATA and the final dot): its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Who sends it.
    pub sender: Sender,
    /// MAIL FROM (may be empty: `<>`).
    pub from: String,
    /// RCPT TO, in order, each once.
    pub to: Vec<String>,
}

/// What the caller does after a command line.
#[derive(Debug)]
pub enum Step {
    /// Write the reply and read on.
    Reply(Reply),
    /// Write the reply and close the connection.
    Close(Reply),
    /// Write the reply (220), then the TLS handshake, then [`Session::tls_started`].
    StartTls(Reply),
    /// Check the login, then write [`Session::checked`]'s reply.
    Login(Login),
    /// Write the reply (354), then read the message with a [`Body`], then [`Session::data_end`].
    Data(Reply),
}

/// Where a SASL exchange is.
#[derive(Debug)]
enum Sasl {
    /// `AUTH PLAIN` without an initial response: the next line is the response.
    Plain,
    /// `AUTH LOGIN`: the next line is the user name.
    LoginUser,
    /// `AUTH LOGIN`: the next line is the password of this user.
    LoginPassword(String),
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    greeted: bool,
    sender: Option<Sender>,
    sasl: Option<Sasl>,
    from: Option<String>,
    to: Vec<String>,
    errors: u32,
}

impl Session {
    /// A new connection.
    pub fn new(settings: Settings) -> Session {
        Session {
            settings,
            greeted: false,
            sender: None,
            sasl: None,
            from: None,
            to: Vec::new(),
            errors: 0,
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::new(
            220,
            format!("{} ESMTP mailpilot relay", self.settings.hostname),
        )
    }

    /// The reply when the client was too slow (then close).
    pub fn timed_out(&self) -> Reply {
        Reply::new(
            421,
            format!(
                "4.4.2 {} Error: timeout exceeded, closing",
                self.settings.hostname
            ),
        )
    }

    /// Whether a message is being composed (for the log of a dropped connection).
    pub fn in_transaction(&self) -> bool {
        self.from.is_some()
    }

    /// Whether AUTH may be used now.
    fn auth_offered(&self) -> bool {
        self.settings.logins && (self.settings.tls || self.settings.auth_without_tls)
    }

    /// A line over [`MAX_LINE`] (the caller skipped the rest of it).
    pub fn line_too_long(&mut self) -> Step {
        self.sasl = None;
        self.refuse(500, "5.5.6 Line too long")
    }

    /// Handles one line (without its CRLF).
    pub fn command(&mut self, line: &[u8]) -> Step {
        if let Some(sasl) = self.sasl.take() {
            return self.sasl_line(sasl, line);
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return self.refuse(500, "5.5.2 Command not recognized");
        };
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.hello(rest, true),
            "HELO" => self.hello(rest, false),
            "STARTTLS" => self.starttls(rest),
            "AUTH" => self.auth(rest),
            "MAIL" => self.mail(rest),
            "RCPT" => self.rcpt(rest),
            "DATA" => self.data(rest),
            "RSET" => {
                self.reset();
                ok("2.0.0 Ok")
            }
            "NOOP" => ok("2.0.0 Ok"),
            "QUIT" => Step::Close(Reply::new(221, "2.0.0 Bye")),
            "VRFY" => Step::Reply(Reply::new(252, "2.5.0 Cannot VRFY user")),
            "HELP" => Step::Reply(Reply::new(214, "2.0.0 See RFC 5321")),
            "EXPN" | "ETRN" | "BDAT" | "TURN" => self.refuse(502, "5.5.1 Command not implemented"),
            _ => self.refuse(500, "5.5.2 Command not recognized"),
        }
    }

    /// A refusal that counts toward [`MAX_ERRORS`].
    fn refuse(&mut self, code: u16, text: &str) -> Step {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            return Step::Close(Reply::new(
                421,
                "4.7.0 Too many errors, closing the connection",
            ));
        }
        Step::Reply(Reply::new(code, text))
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    fn hello(&mut self, domain: &str, extended: bool) -> Step {
        if domain.is_empty() || domain.len() > 255 || domain.contains(char::is_control) {
            let verb = if extended { "EHLO" } else { "HELO" };
            return self.refuse(501, &format!("5.5.4 Syntax: {verb} hostname"));
        }
        self.reset();
        self.greeted = true;
        let host = self.settings.hostname.clone();
        if !extended {
            return ok(&host);
        }
        let mut lines = vec![
            host,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.settings.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.settings.starttls && !self.settings.tls {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() && self.sender.as_ref().is_none_or(|s| s.user.is_none()) {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        Step::Reply(Reply { code: 250, lines })
    }

    fn starttls(&mut self, rest: &str) -> Step {
        if !rest.is_empty() {
            return self.refuse(501, "5.5.4 Syntax: STARTTLS");
        }
        if self.settings.tls {
            return self.refuse(503, "5.5.1 TLS already active");
        }
        if !self.settings.starttls {
            return self.refuse(454, "4.7.0 TLS not available");
        }
        Step::StartTls(Reply::new(220, "2.0.0 Ready to start TLS"))
    }

    /// The TLS handshake after STARTTLS succeeded: everything before is forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.settings.tls = true;
        self.greeted = false;
        self.sender = None;
        self.reset();
    }

    fn auth(&mut self, rest: &str) -> Step {
        if !self.greeted {
            return self.refuse(503, "5.5.1 Send EHLO first");
        }
        if self.sender.as_ref().is_some_and(|s| s.user.is_some()) {
            return self.refuse(503, "5.5.1 Already authenticated");
        }
        if self.from.is_some() {
            return self.refuse(503, "5.5.1 AUTH not allowed during a mail transaction");
        }
        if !self.settings.logins {
            return self.refuse(502, "5.5.1 AUTH not available: no relay users");
        }
        if !self.auth_offered() {
            return self.refuse(538, "5.7.11 Encryption required: send STARTTLS first");
        }
        let (mechanism, initial) = rest.split_once(' ').unwrap_or((rest, ""));
        let initial = initial.trim();
        match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" if initial.is_empty() => self.ask(Sasl::Plain, ""),
            "PLAIN" => self.sasl_line(Sasl::Plain, initial.as_bytes()),
            "LOGIN" if initial.is_empty() => self.ask(Sasl::LoginUser, "VXNlcm5hbWU6"),
            "LOGIN" => self.sasl_line(Sasl::LoginUser, initial.as_bytes()),
            "" => self.refuse(501, "5.5.4 Syntax: AUTH mechanism"),
            _ => self.refuse(504, "5.5.4 Unrecognized authentication type"),
        }
    }

    /// A 334 challenge; the next line answers it.
    fn ask(&mut self, next: Sasl, challenge: &str) -> Step {
        self.sasl = Some(next);
        Step::Reply(Reply::new(334, challenge))
    }

    fn sasl_line(&mut self, sasl: Sasl, line: &[u8]) -> Step {
        if line == b"*" {
            return self.refuse(501, "5.0.0 Authentication cancelled");
        }
        let Some(decoded) = STANDARD.decode(line.trim_ascii()).ok() else {
            return self.refuse(501, "5.5.2 Cannot decode the response");
        };
        match sasl {
            Sasl::Plain => {
                let mut parts = decoded.split(|b| *b == 0);
                let (Some(authz), Some(user), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.refuse(501, "5.5.2 Malformed PLAIN response");
                };
                if !authz.is_empty() && authz != user {
                    return self.refuse(535, "5.7.8 Authentication credentials invalid");
                }
                self.login(user, password)
            }
            Sasl::LoginUser => match user_name(&decoded) {
                Some(user) => self.ask(Sasl::LoginPassword(user), "UGFzc3dvcmQ6"),
                None => self.refuse(535, "5.7.8 Authentication credentials invalid"),
            },
            Sasl::LoginPassword(user) => self.login(user.as_bytes(), &decoded),
        }
    }

    fn login(&mut self, user: &[u8], password: &[u8]) -> Step {
        match (user_name(user), String::from_utf8(password.to_vec())) {
            (Some(user), Ok(password)) if !password.is_empty() => Step::Login(Login {
                user,
                password: Secret::new(password),
            }),
            _ => self.refuse(535, "5.7.8 Authentication credentials invalid"),
        }
    }

    /// The reply to a checked [`Login`].
    pub fn checked(&mut self, result: Checked) -> Reply {
        match result {
            Checked::Accepted(sender) => {
                self.sender = Some(sender);
                Reply::new(235, "2.7.0 Authentication successful")
            }
            Checked::Refused => {
                self.errors += 1;
                Reply::new(535, "5.7.8 Authentication credentials invalid")
            }
            Checked::Throttled => {
                self.errors += 1;
                Reply::new(
                    454,
                    "4.7.0 Too many failed logins from this address, try again later",
                )
            }
        }
    }

    fn mail(&mut self, rest: &str) -> Step {
        if !self.greeted {
            return self.refuse(503, "5.5.1 Send EHLO first");
        }
        if self.from.is_some() {
            return self.refuse(503, "5.5.1 Nested MAIL command");
        }
        let Some(sender) = self.sender.clone().or(self.settings.anonymous.clone()) else {
            return self.refuse(530, "5.7.0 Authentication required");
        };
        let Some((from, params)) = path(rest, "FROM:") else {
            return self.refuse(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        if !from.is_empty() && !is_address(&from) {
            return self.refuse(553, "5.1.7 Bad sender address syntax");
        }
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.settings.max_message_size => {
                        return self.refuse(552, "5.3.4 Message size exceeds fixed limit");
                    }
                    Ok(_) => {}
                    Err(_) => return self.refuse(501, "5.5.4 Bad SIZE parameter"),
                },
                "BODY"
                    if value.eq_ignore_ascii_case("7BIT")
                        || value.eq_ignore_ascii_case("8BITMIME") => {}
                "AUTH" => {}
                _ => return self.refuse(555, "5.5.4 Unsupported MAIL parameter"),
            }
        }
        if !from.is_empty() && !sender.allowed_from.allows(&from) {
            return self.refuse(553, &not_allowed(&from, &sender));
        }
        self.from = Some(from);
        ok("2.1.0 Ok")
    }

    fn rcpt(&mut self, rest: &str) -> Step {
        if self.from.is_none() {
            return self.refuse(503, "5.5.1 Need MAIL command");
        }
        let Some((to, params)) = path(rest, "TO:") else {
            return self.refuse(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if !params.trim().is_empty() {
            return self.refuse(555, "5.5.4 Unsupported RCPT parameter");
        }
        if !is_address(&to) {
            return self.refuse(553, "5.1.3 Bad recipient address syntax");
        }
        if self.to.len() >= self.settings.max_recipients {
            return Step::Reply(Reply::new(452, "4.5.3 Too many recipients"));
        }
        if !self.to.iter().any(|t| t.eq_ignore_ascii_case(&to)) {
            self.to.push(to);
        }
        ok("2.1.5 Ok")
    }

    fn data(&mut self, rest: &str) -> Step {
        if !rest.is_empty() {
            return self.refuse(501, "5.5.4 Syntax: DATA");
        }
        if self.from.is_none() {
            return self.refuse(503, "5.5.1 Need MAIL command");
        }
        if self.to.is_empty() {
            return self.refuse(554, "5.5.1 No valid recipients");
        }
        Step::Data(Reply::new(354, "End data with <CR><LF>.<CR><LF>"))
    }

    /// The message after DATA is complete: its envelope (the transaction ends either way), or the
    /// refusal when it was too large.
    ///
    /// # Errors
    /// The 552 reply when the message went over `max_message_size`.
    pub fn data_end(&mut self, body: &Body) -> Result<Envelope, Reply> {
        let from = self.from.take().unwrap_or_default();
        let to = std::mem::take(&mut self.to);
        if body.over_limit() {
            return Err(Reply::new(552, "5.3.4 Message size exceeds fixed limit"));
        }
        let sender = self
            .sender
            .clone()
            .or(self.settings.anonymous.clone())
            .ok_or_else(|| Reply::new(530, "5.7.0 Authentication required"))?;
        Ok(Envelope { sender, from, to })
    }
}

fn ok(text: &str) -> Step {
    Step::Reply(Reply::new(250, text))
}

/// The 553 text for a From address outside the sender's `allowed_from`.
pub fn not_allowed(from: &str, sender: &Sender) -> String {
    let who = match &sender.user {
        Some(u) => format!("user {u}"),
        None => "unauthenticated clients".to_string(),
    };
    format!("5.7.1 Sender <{from}> is not allowed for {who} (allowed_from)")
}

/// A user name: UTF-8, at most 255 bytes, no control characters or spaces.
fn user_name(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?;
    (!name.is_empty() && name.len() <= 255 && !name.chars().any(|c| c.is_control() || c == ' '))
        .then(|| name.to_string())
}

/// `FROM:<a@x> PARAMS` → (`a@x`, `PARAMS`). Tolerates a space after the colon and a bare address
/// (clients that forget the brackets); a source route (`<@a,@b:u@x>`) is dropped.
fn path(rest: &str, keyword: &str) -> Option<(String, String)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start();
    let (address, params) = match rest.strip_prefix('<') {
        Some(inner) => {
            let end = inner.find('>')?;
            (&inner[..end], &inner[end + 1..])
        }
        None => rest.split_once(' ').unwrap_or((rest, "")),
    };
    let address = address.rsplit_once(':').map_or(address, |(_, a)| a);
    Some((address.to_string(), params.trim().to_string()))
}

/// `local@domain` with a dotted domain (or a literal), printable ASCII, bounded.
fn is_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    address.len() <= MAX_ADDRESS
        && !local.is_empty()
        && (domain.contains('.') || domain.starts_with('['))
        && address.bytes().all(|b| b.is_ascii_graphic())
        && !address.contains(['<', '>', ','])
}

/// Decodes DATA as it arrives: lines are dot-unstuffed, the lone `.` ends the message, and no more
/// than the limit is kept (the rest is counted and dropped, and the message refused with 552).
#[derive(Debug)]
pub struct Body {
    message: Vec<u8>,
    limit: u64,
    size: u64,
    line_start: bool,
    done: bool,
}

impl Body {
    /// A decoder keeping at most `limit` bytes.
    pub fn new(limit: u64) -> Body {
        Body {
            message: Vec::new(),
            limit,
            size: 0,
            line_start: true,
            done: false,
        }
    }

    /// Takes as much of `input` as belongs to the message and returns how many bytes it took: all
    /// of them, or up to and including the end marker (what follows is the next command), or fewer
    /// when `input` ends inside what may be the end marker (feed it again with more).
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        while at < input.len() && !self.done {
            let rest = &input[at..];
            let (line, complete) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..=i], true),
                None => (rest, false),
            };
            if self.line_start && line.first() == Some(&b'.') {
                if matches!(line, b".\r\n" | b".\n") {
                    self.done = true;
                    return at + line.len();
                }
                if !complete && matches!(line, b"." | b".\r") {
                    return at;
                }
                self.keep(&line[1..]);
            } else {
                self.keep(line);
            }
            self.line_start = complete;
            at += line.len();
        }
        at
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size <= self.limit {
            self.message.extend_from_slice(bytes);
        }
    }

    /// Whether the end marker was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the message went over the limit.
    pub fn over_limit(&self) -> bool {
        self.size > self.limit
    }

    /// The message, unstuffed, without the end marker.
    pub fn into_message(self) -> Vec<u8> {
        self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(user: Option<&str>) -> Sender {
        Sender {
            user: user.map(str::to_string),
            account: "work".into(),
            allowed_from: FromPatterns::new(vec![
                "ops@example.com".into(),
                "*@lab.example.com".into(),
            ]),
        }
    }

    fn settings() -> Settings {
        Settings {
            hostname: "relay.test".into(),
            max_message_size: 1000,
            max_recipients: 2,
            starttls: true,
            tls: false,
            logins: true,
            auth_without_tls: false,
            anonymous: None,
        }
    }

    fn reply(step: Step) -> Reply {
        match step {
            Step::Reply(r) | Step::Close(r) | Step::StartTls(r) | Step::Data(r) => r,
            Step::Login(l) => panic!("unexpected login for {}", l.user),
        }
    }

    fn code(s: &mut Session, line: &str) -> u16 {
        reply(s.command(line.as_bytes())).code
    }

    /// A session after STARTTLS and a successful AUTH PLAIN.
    fn authenticated() -> Session {
        let mut s = Session::new(settings());
        assert_eq!(code(&mut s, "EHLO client"), 250);
        assert!(matches!(s.command(b"STARTTLS"), Step::StartTls(_)));
        s.tls_started();
        assert_eq!(code(&mut s, "EHLO client"), 250);
        let Step::Login(login) = s.command(b"AUTH PLAIN AHNjYW5uZXIAc2VjcmV0") else {
            panic!("no login");
        };
        assert_eq!(
            (login.user.as_str(), login.password.expose()),
            ("scanner", "secret")
        );
        assert_eq!(
            s.checked(Checked::Accepted(sender(Some("scanner")))).code,
            235
        );
        s
    }

    /// EHLO lists the extensions; AUTH only once TLS is up on a non-loopback listener, and STARTTLS
    /// only before it.
    #[test]
    fn ehlo_advertises_auth_only_after_tls() {
        let mut s = Session::new(settings());
        let before = reply(s.command(b"EHLO client")).lines;
        assert_eq!(before[0], "relay.test");
        assert!(before.contains(&"PIPELINING".to_string()));
        assert!(before.contains(&"SIZE 1000".to_string()));
        assert!(before.contains(&"8BITMIME".to_string()));
        assert!(before.contains(&"STARTTLS".to_string()));
        assert!(!before.iter().any(|l| l.starts_with("AUTH")));
        assert_eq!(code(&mut s, "AUTH PLAIN AHNjYW5uZXIAc2VjcmV0"), 538);
        assert!(matches!(s.command(b"STARTTLS"), Step::StartTls(_)));
        s.tls_started();
        assert_eq!(
            code(&mut s, "MAIL FROM:<ops@example.com>"),
            503,
            "EHLO again after TLS"
        );
        let after = reply(s.command(b"EHLO client")).lines;
        assert!(after.contains(&"AUTH PLAIN LOGIN".to_string()));
        assert!(!after.contains(&"STARTTLS".to_string()));
        assert_eq!(code(&mut s, "STARTTLS"), 503);
        assert_eq!(code(&mut s, "HELO"), 501);
        assert_eq!(reply(s.command(b"HELO client")).lines, ["relay.test"]);
    }

    /// Without a certificate STARTTLS is refused; on a loopback listener AUTH works without TLS.
    #[test]
    fn starttls_unavailable_and_loopback_auth() {
        let mut s = Session::new(Settings {
            starttls: false,
            auth_without_tls: true,
            ..settings()
        });
        let lines = reply(s.command(b"EHLO c")).lines;
        assert!(lines.contains(&"AUTH PLAIN LOGIN".to_string()));
        assert!(!lines.contains(&"STARTTLS".to_string()));
        assert_eq!(code(&mut s, "STARTTLS"), 454);
        assert_eq!(code(&mut s, "STARTTLS now"), 501);
        assert!(matches!(
            s.command(b"AUTH PLAIN AHNjYW5uZXIAc2VjcmV0"),
            Step::Login(_)
        ));
    }

    /// AUTH LOGIN asks for the name, then the password; `*` cancels; bad base64 and unknown
    /// mechanisms are refused; a wrong password is 535 and the session may try again.
    #[test]
    fn auth_login_and_refusals() {
        let mut s = Session::new(Settings {
            tls: true,
            ..settings()
        });
        assert_eq!(code(&mut s, "AUTH LOGIN"), 503, "EHLO first");
        code(&mut s, "EHLO c");
        assert_eq!(reply(s.command(b"AUTH LOGIN")).lines, ["VXNlcm5hbWU6"]);
        assert_eq!(reply(s.command(b"c2Nhbm5lcg==")).lines, ["UGFzc3dvcmQ6"]);
        let Step::Login(login) = s.command(b"c2VjcmV0") else {
            panic!("no login")
        };
        assert_eq!(login.user, "scanner");
        assert!(!format!("{login:?}").contains("secret"));
        assert_eq!(s.checked(Checked::Refused).code, 535);
        assert_eq!(s.checked(Checked::Throttled).code, 454);
        assert_eq!(code(&mut s, "AUTH LOGIN"), 334);
        assert_eq!(code(&mut s, "*"), 501);
        assert_eq!(code(&mut s, "AUTH PLAIN"), 334);
        assert_eq!(code(&mut s, "!!notbase64"), 501);
        assert_eq!(code(&mut s, "AUTH PLAIN AGE="), 501, "no password part");
        assert_eq!(code(&mut s, "AUTH PLAIN AGEA"), 535, "an empty password");
        assert_eq!(code(&mut s, "AUTH CRAM-MD5"), 504);
        assert_eq!(code(&mut s, "AUTH"), 501);
        // authzid other than the user: no proxy logins.
        assert_eq!(code(&mut s, "AUTH PLAIN b3RoZXIAc2Nhbm5lcgBzZWNyZXQ="), 535);
        assert!(matches!(s.command(b"AUTH LOGIN c2Nhbm5lcg=="), Step::Reply(r) if r.code == 334));
    }

    /// No MAIL without AUTH (never an open relay) unless the listener allows the loopback client.
    #[test]
    fn mail_needs_auth_unless_anonymous_allowed() {
        let mut s = Session::new(settings());
        code(&mut s, "EHLO c");
        assert_eq!(code(&mut s, "MAIL FROM:<ops@example.com>"), 530);
        let mut s = Session::new(Settings {
            anonymous: Some(sender(None)),
            ..settings()
        });
        code(&mut s, "EHLO c");
        assert_eq!(code(&mut s, "MAIL FROM:<ops@example.com>"), 250);
        assert_eq!(code(&mut s, "RSET"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<other@example.com>"), 553);
        let mut s = Session::new(Settings {
            anonymous: Some(sender(None)),
            logins: false,
            auth_without_tls: true,
            ..settings()
        });
        let lines = reply(s.command(b"EHLO c")).lines;
        assert!(
            !lines.iter().any(|l| l.starts_with("AUTH")),
            "no users, no AUTH"
        );
        assert_eq!(code(&mut s, "AUTH PLAIN AHNjYW5uZXIAc2VjcmV0"), 502);
    }

    /// A whole transaction: MAIL with SIZE and BODY, RCPT (each address once), DATA, the
    /// envelope; then a second message on the same connection.
    #[test]
    fn transaction() {
        let mut s = authenticated();
        assert_eq!(code(&mut s, "RCPT TO:<a@example.org>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(
            code(&mut s, "MAIL FROM:<ops@example.com> SIZE=500 BODY=8BITMIME"),
            250
        );
        assert_eq!(code(&mut s, "MAIL FROM:<ops@example.com>"), 503, "nested");
        assert_eq!(code(&mut s, "DATA"), 554, "no recipient yet");
        assert_eq!(code(&mut s, "RCPT TO: <a@example.org>"), 250);
        assert_eq!(code(&mut s, "rcpt to:<A@example.org>"), 250);
        assert_eq!(code(&mut s, "AUTH PLAIN AHNjYW5uZXIAc2VjcmV0"), 503);
        assert_eq!(code(&mut s, "DATA"), 354);
        let mut body = Body::new(1000);
        assert_eq!(body.feed(b"Subject: x\r\n\r\nhi\r\n.\r\n"), 21);
        let envelope = s.data_end(&body).expect("accepted");
        assert_eq!(envelope.from, "ops@example.com");
        assert_eq!(envelope.to, ["a@example.org"]);
        assert_eq!(envelope.sender.user.as_deref(), Some("scanner"));
        assert_eq!(
            code(&mut s, "MAIL FROM:<x@lab.example.com>"),
            250,
            "second message"
        );
        assert_eq!(code(&mut s, "MAIL FROM:<x@lab.example.com>"), 503);
    }

    /// Refusals with their codes: SIZE over the limit (552), too many recipients (452), a From
    /// outside allowed_from (553), bad addresses and parameters, unknown commands.
    #[test]
    fn refusals() {
        let mut s = authenticated();
        assert_eq!(code(&mut s, "MAIL FROM:<ops@example.com> SIZE=1001"), 552);
        assert_eq!(code(&mut s, "MAIL FROM:<ops@example.com> SIZE=big"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<ops@example.com> SMTPUTF8"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<ceo@example.com>"), 553);
        assert!(reply(s.command(b"MAIL FROM:<ceo@example.com>")).lines[0].contains("user scanner"));
        assert_eq!(code(&mut s, "MAIL FROM:<not an address>"), 553);
        assert_eq!(code(&mut s, "MAIL TO:<ops@example.com>"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<>"), 250, "null sender");
        assert_eq!(code(&mut s, "RCPT TO:<root>"), 553);
        assert_eq!(code(&mut s, "RCPT TO:<a@example.org> NOTIFY=NEVER"), 555);
        assert_eq!(code(&mut s, "RCPT TO:<a@example.org>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<b@example.org>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<c@example.org>"), 452);
        assert_eq!(code(&mut s, "DATA now"), 501);
        assert_eq!(code(&mut s, "DATA"), 354);
        let mut body = Body::new(10);
        body.feed(b"0123456789ABCDEF\r\n.\r\n");
        assert_eq!(s.data_end(&body).expect_err("too big").code, 552);
        assert_eq!(code(&mut s, "EXPN list"), 502);
        assert_eq!(code(&mut s, "FROB"), 500);
        assert_eq!(reply(s.command(&[0xff, 0xfe])).code, 500);
        assert_eq!(reply(s.line_too_long()).code, 500);
        assert_eq!(code(&mut s, "VRFY root"), 252);
        assert_eq!(code(&mut s, "NOOP"), 250);
        assert!(matches!(s.command(b"QUIT"), Step::Close(r) if r.code == 221));
    }

    /// A client that only sends junk is told to go after MAX_ERRORS refusals.
    #[test]
    fn too_many_errors_close() {
        let mut s = Session::new(settings());
        for _ in 1..MAX_ERRORS {
            assert!(matches!(s.command(b"JUNK"), Step::Reply(_)));
        }
        assert!(matches!(s.command(b"JUNK"), Step::Close(r) if r.code == 421));
    }

    /// DATA decoding: dot-unstuffing, the end marker split across reads, bytes after the marker
    /// left for the next command, bare LF lines, and the size limit.
    #[test]
    fn body_decoding() {
        let mut b = Body::new(100);
        assert_eq!(b.feed(b"..leading dot\r\nline"), 19);
        assert_eq!(b.feed(b" two\r\n."), 6, "a lone dot may be the end");
        assert_eq!(
            b.feed(b"..\r\n."),
            4,
            "a dot-stuffed dot line, then maybe the end"
        );
        assert_eq!(b.feed(b"."), 0);
        assert_eq!(b.feed(b".x\n.\r\nQUIT\r\n"), 6);
        assert!(b.is_done());
        assert!(!b.over_limit());
        assert_eq!(b.into_message(), b".leading dot\r\nline two\r\n.\r\nx\n");
        let mut b = Body::new(4);
        assert_eq!(b.feed(b"12345\r\n.\n"), 9);
        assert!(b.is_done() && b.over_limit());
        assert_eq!(b.into_message(), b"", "nothing kept past the limit");
        let mut b = Body::new(100);
        assert_eq!(b.feed(b"a.\r\n"), 4);
        assert_eq!(b.feed(b"\r\n.\r\n"), 5, "empty line then the end");
        assert_eq!(b.into_message(), b"a.\r\n\r\n");
    }

    proptest::proptest! {
        /// Any message of CRLF lines, dot-stuffed as a client sends it and cut into chunks
        /// anywhere, decodes to itself; the bytes after the end marker are left for the next
        /// command.
        #[test]
        fn body_decodes_any_split(
            lines in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(b".a ".to_vec()), 0..6), 0..20),
            cuts in proptest::collection::vec(1usize..9, 1..40),
        ) {
            let mut message = Vec::new();
            let mut wire = Vec::new();
            for line in &lines {
                message.extend_from_slice(line);
                message.extend_from_slice(b"\r\n");
                if line.first() == Some(&b'.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\nQUIT\r\n");
            let mut body = Body::new(1 << 20);
            let mut pending: Vec<u8> = Vec::new();
            let mut at = 0;
            let mut consumed = 0;
            for cut in cuts.iter().cycle() {
                if body.is_done() || at >= wire.len() {
                    break;
                }
                let end = (at + cut).min(wire.len());
                pending.extend_from_slice(&wire[at..end]);
                at = end;
                let used = body.feed(&pending);
                consumed += used;
                pending.drain(..used);
            }
            proptest::prop_assert!(body.is_done());
            proptest::prop_assert_eq!(&wire[consumed..], b"QUIT\r\n".as_slice());
            proptest::prop_assert_eq!(body.into_message(), message);
        }
    }

    /// Replies are written with continuation dashes and CRLF.
    #[test]
    fn reply_wire_form() {
        let mut out = Vec::new();
        Reply {
            code: 250,
            lines: vec!["a".into(), "b".into()],
        }
        .write_to(&mut out);
        assert_eq!(out, b"250-a\r\n250 b\r\n");
    }
}

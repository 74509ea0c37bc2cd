//! The SMTP client protocol (RFC 5321) on one connection: replies read with bounds, commands
//! written in one piece, the EHLO keywords mailpilot uses, STARTTLS (RFC 3207) with the same TLS
//! as IMAP, and a mail transaction pipelined (RFC 2920: MAIL, every RCPT and DATA in one write)
//! when the server offers PIPELINING, with the message dot-stuffed as it is written.
//!
//! Every read and write has a time limit; every reply is bounded in line length, line count and
//! size, so a hostile or broken server can make a send fail but never hang or flood it.

use std::time::Duration;

use lettre::address::Envelope;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::config::{Server, Tls};
use crate::error::{clean, ServerError, SERVER_TEXT_MAX};
use crate::net::{self, COMMAND_TIMEOUT, CONNECT_TIMEOUT};

/// The longest reply line read (RFC 5321 §4.5.3.1.5 says 512; servers' EHLO lines run longer).
const MAX_REPLY_LINE: u64 = 4096;
/// The most lines one reply may have.
const MAX_REPLY_LINES: usize = 256;
/// The message body and the server's final reply (RFC 5321 §4.5.3.2.6: 10 minutes).
pub const DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// Message bytes gathered per write.
const CHUNK: usize = 64 * 1024;

/// A server's reply: its code and its text lines (without code and CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Each line's text.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The reply as one cleaned line: `250 2.0.0 Ok: queued as 4F1`.
    pub fn text(&self) -> String {
        let joined = self.lines.join(" ");
        let text = if joined.is_empty() {
            self.code.to_string()
        } else {
            format!("{} {joined}", self.code)
        };
        clean(&text, SERVER_TEXT_MAX)
    }

    /// The refusal as an error: 4xx transient, anything else failed.
    pub fn refused(&self, server: &str, what: &str) -> ServerError {
        let reason = format!("{what} refused: {}", self.text());
        if self.is_transient() {
            ServerError::transient(server, reason)
        } else {
            ServerError::failed(server, reason)
        }
    }
}

/// The EHLO keywords mailpilot acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// STARTTLS.
    pub starttls: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// SIZE and its limit, if one is given (RFC 1870); `Some(0)` means no fixed limit.
    pub size: Option<u64>,
}

impl Capabilities {
    /// The keywords of an EHLO reply (its first line is the greeting and is skipped).
    pub fn parse(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }
}

/// One SMTP connection: the stream, what is waiting to be written, and the server's keywords.
pub struct Conn {
    stream: BufReader<net::Stream>,
    out: Vec<u8>,
    server: String,
    caps: Capabilities,
}

impl Conn {
    /// Connects, reads the greeting, says EHLO, and (as `server.tls` says) secures the connection:
    /// implicit TLS first, or STARTTLS and a second EHLO. Never sends anything else in clear text
    /// unless the config allowed `tls = "none"` (loopback only).
    ///
    /// # Errors
    /// [`ServerError`]: refused, timed out, TLS failure, no STARTTLS offered, a greeting that is
    /// not 220.
    pub async fn open(server: &Server) -> Result<Conn, ServerError> {
        let name = server.address();
        let tcp = net::connect(server).await?;
        let stream = match server.tls {
            Tls::Implicit => net::tls(tcp, server, "connecting").await?,
            Tls::Starttls | Tls::None => net::Stream::Plain(tcp),
        };
        let mut conn = Conn {
            stream: BufReader::new(stream),
            out: Vec::new(),
            server: name,
            caps: Capabilities::default(),
        };
        let greeting = conn.read_reply(CONNECT_TIMEOUT, "the greeting").await?;
        if greeting.code != 220 {
            return Err(greeting.refused(&conn.server, "the connection"));
        }
        conn.hello().await?;
        if server.tls == Tls::Starttls {
            conn.starttls(server).await?;
        }
        Ok(conn)
    }

    /// `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The server's keywords from the last EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn hello(&mut self) -> Result<(), ServerError> {
        let line = format!("EHLO {}\r\n", hello_name(&self.stream));
        let reply = self.command(&line, "EHLO").await?;
        if !reply.is_ok() {
            return Err(reply.refused(&self.server, "EHLO"));
        }
        self.caps = Capabilities::parse(&reply);
        Ok(())
    }

    async fn starttls(&mut self, server: &Server) -> Result<(), ServerError> {
        if !self.caps.starttls {
            return Err(ServerError::failed(
                &self.server,
                "the server does not offer STARTTLS; refusing to send a token in clear text",
            )
            .with_hint("use tls = \"implicit\" with the server's TLS port (465)"));
        }
        let reply = self.command("STARTTLS\r\n", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(reply.refused(&self.server, "STARTTLS"));
        }
        // Anything the server sent after its 220 would be read as if it came over TLS (the
        // STARTTLS injection of CVE-2011-0411 and its kin): refuse it.
        if !self.stream.buffer().is_empty() {
            return Err(ServerError::failed(
                &self.server,
                "the server sent data after its STARTTLS reply, before the TLS handshake; refusing the connection",
            ));
        }
        let net::Stream::Plain(tcp) = std::mem::replace(self.stream.get_mut(), net::Stream::Closed)
        else {
            return Err(ServerError::failed(
                &self.server,
                "STARTTLS on a connection that is already encrypted",
            ));
        };
        self.stream = BufReader::new(net::tls(tcp, server, "STARTTLS").await?);
        self.hello().await
    }

    /// Writes `line` (with its CRLF) and reads the reply, whatever its code.
    ///
    /// # Errors
    /// [`ServerError::Transient`] when the connection fails or times out; a malformed reply is
    /// [`ServerError::Failed`].
    pub async fn command(&mut self, line: &str, what: &str) -> Result<Reply, ServerError> {
        self.queue(line);
        self.flush(COMMAND_TIMEOUT, what).await?;
        self.read_reply(COMMAND_TIMEOUT, what).await
    }

    /// One mail transaction: [`Conn::envelope`], then [`Conn::data`].
    ///
    /// # Errors
    /// As those two.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Reply, ServerError> {
        self.envelope(envelope, message).await?;
        self.data(message).await
    }

    /// A transaction's first half: MAIL, RCPT for each recipient and DATA, in one write when the
    /// server offers PIPELINING. On success the server waits for the message ([`Conn::data`]); a
    /// refused recipient refuses the whole message (nothing is delivered to the others).
    ///
    /// # Errors
    /// The refusing reply as [`ServerError`] (4xx transient, 5xx failed), or a connection failure.
    /// After an error the connection may have been closed; [`Conn::is_usable`] says.
    pub async fn envelope(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<(), ServerError> {
        let mail = self.mail_command(envelope, message)?;
        let rcpts: Vec<String> = envelope
            .to()
            .iter()
            .map(|to| format!("RCPT TO:<{to}>\r\n"))
            .collect();
        let replies = if self.caps.pipelining {
            self.queue(&mail);
            for r in &rcpts {
                self.queue(r);
            }
            self.queue("DATA\r\n");
            self.flush(COMMAND_TIMEOUT, "MAIL").await?;
            let mut replies = Vec::with_capacity(rcpts.len() + 2);
            for what in std::iter::once("MAIL FROM")
                .chain(rcpts.iter().map(|_| "RCPT TO"))
                .chain(std::iter::once("DATA"))
            {
                replies.push(self.read_reply(COMMAND_TIMEOUT, what).await?);
            }
            replies
        } else {
            self.one_by_one(&mail, &rcpts).await?
        };
        self.check_replies(envelope, &replies).await
    }

    /// A transaction's second half, after [`Conn::envelope`]: the dot-stuffed message and the
    /// server's final reply.
    ///
    /// # Errors
    /// The refusing reply as [`ServerError`] (4xx transient, 5xx failed), or a connection failure.
    pub async fn data(&mut self, message: &[u8]) -> Result<Reply, ServerError> {
        self.data_sent(message).await?;
        self.data_reply().await
    }

    /// [`Conn::data`]'s first half: the message written, its reply not yet read (a batch builds
    /// the next message meanwhile).
    ///
    /// # Errors
    /// A connection failure.
    pub async fn data_sent(&mut self, message: &[u8]) -> Result<(), ServerError> {
        self.write_data(message).await
    }

    /// [`Conn::data`]'s second half: the server's final reply.
    ///
    /// # Errors
    /// The refusing reply as [`ServerError`] (4xx transient, 5xx failed), or a connection failure.
    pub async fn data_reply(&mut self) -> Result<Reply, ServerError> {
        let reply = self.read_reply(DATA_TIMEOUT, "the message").await?;
        if reply.is_ok() {
            Ok(reply)
        } else {
            Err(reply.refused(&self.server, "the message"))
        }
    }

    /// Without PIPELINING: each command waits for its reply, stopping at the first refusal.
    async fn one_by_one(
        &mut self,
        mail: &str,
        rcpts: &[String],
    ) -> Result<Vec<Reply>, ServerError> {
        let mut replies = Vec::with_capacity(rcpts.len() + 2);
        for line in std::iter::once(mail)
            .chain(rcpts.iter().map(String::as_str))
            .chain(std::iter::once("DATA\r\n"))
        {
            let reply = self.command(line, "MAIL").await?;
            let refused = !reply.is_ok() && reply.code != 354;
            replies.push(reply);
            if refused {
                break;
            }
        }
        Ok(replies)
    }

    /// Checks the envelope's replies: all accepted → the server waits for the message; a refusal
    /// → reset (or, when DATA was already accepted, drop the connection so nothing is delivered).
    async fn check_replies(
        &mut self,
        envelope: &Envelope,
        replies: &[Reply],
    ) -> Result<(), ServerError> {
        let (data, commands) = replies.split_last().expect("at least MAIL's reply");
        let refused = commands.iter().enumerate().find(|(_, r)| !r.is_ok());
        let data_accepted = data.code == 354 && replies.len() == envelope.to().len() + 2;
        let Some((i, reply)) = refused.or(if data_accepted {
            None
        } else {
            Some((commands.len(), data))
        }) else {
            return Ok(());
        };
        let what = match i {
            0 => "MAIL FROM".to_string(),
            i if i <= envelope.to().len() => format!("recipient <{}>", envelope.to()[i - 1]),
            _ => "DATA".to_string(),
        };
        let error = reply.refused(&self.server, &what);
        if data_accepted {
            // The server waits for the message: closing is the only way to send nothing.
            self.close();
        } else {
            let _ = self.command("RSET\r\n", "RSET").await;
        }
        Err(error)
    }

    fn mail_command(&self, envelope: &Envelope, message: &[u8]) -> Result<String, ServerError> {
        let from = envelope.from().map(ToString::to_string).unwrap_or_default();
        let mut mail = format!("MAIL FROM:<{from}>");
        let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
        if envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii) {
            if !self.caps.smtputf8 {
                return Err(ServerError::failed(
                    &self.server,
                    "an address is not ASCII and the server does not offer SMTPUTF8",
                ));
            }
            mail.push_str(" SMTPUTF8");
        }
        if !message.is_ascii() && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if let Some(limit) = self
            .caps
            .size
            .filter(|l| *l > 0 && message.len() as u64 > *l)
        {
            return Err(ServerError::failed(
                &self.server,
                format!(
                    "the message is {} bytes and the server accepts at most {limit} (its SIZE)",
                    message.len()
                ),
            )
            .with_hint("send smaller attachments, or a link to the file instead"));
        }
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        mail.push_str("\r\n");
        Ok(mail)
    }

    /// The message, dot-stuffed with CRLF line ends (a bare CR or LF becomes CRLF: no line end
    /// the server could read differently), then `.`; written in chunks.
    async fn write_data(&mut self, message: &[u8]) -> Result<(), ServerError> {
        let mut rest = message;
        let mut line_ended = true;
        while !rest.is_empty() {
            (rest, line_ended) = stuff_line(&mut self.out, rest);
            if self.out.len() >= CHUNK {
                self.flush(DATA_TIMEOUT, "sending the message").await?;
            }
        }
        if !line_ended {
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b".\r\n");
        self.flush(DATA_TIMEOUT, "sending the message").await
    }

    /// QUIT, politely and briefly; errors are ignored (everything is already sent).
    pub async fn quit(mut self) {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.command("QUIT\r\n", "QUIT")).await;
    }

    /// Drops the connection without a word.
    pub fn close(&mut self) {
        *self.stream.get_mut() = net::Stream::Closed;
    }

    /// Whether the connection can carry another transaction.
    pub fn is_usable(&self) -> bool {
        !matches!(self.stream.get_ref(), net::Stream::Closed)
    }

    fn queue(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
    }

    /// Writes what is queued, in one write.
    async fn flush(&mut self, limit: Duration, what: &str) -> Result<(), ServerError> {
        let out = std::mem::take(&mut self.out);
        let stream = self.stream.get_mut();
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        let result = net::timed(limit, &self.server, what, write, |e| {
            ServerError::transient(&self.server, format!("{what} failed: the connection broke"))
                .with_source(e)
        })
        .await;
        self.out = out;
        self.out.clear();
        if result.is_err() {
            self.close();
        }
        result
    }

    /// Reads one reply (all its lines), bounded in size and time.
    async fn read_reply(&mut self, limit: Duration, what: &str) -> Result<Reply, ServerError> {
        let server = self.server.clone();
        let stream = &mut self.stream;
        let read = async {
            let mut lines = Vec::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = stream
                    .take(MAX_REPLY_LINE)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 {
                    return Err(ReadError::Closed);
                }
                if line.last() != Some(&b'\n') {
                    return Err(ReadError::Malformed("a reply line longer than 4 KiB"));
                }
                let (code, last, text) = parse_line(&line)
                    .ok_or(ReadError::Malformed("a line that is not an SMTP reply"))?;
                lines.push((code, text));
                if last {
                    break;
                }
                if lines.len() >= MAX_REPLY_LINES {
                    return Err(ReadError::Malformed("a reply of more than 256 lines"));
                }
            }
            let code = lines[0].0;
            if lines.iter().any(|(c, _)| *c != code) {
                return Err(ReadError::Malformed(
                    "a reply whose lines have different codes",
                ));
            }
            Ok(Reply {
                code,
                lines: lines.into_iter().map(|(_, t)| t).collect(),
            })
        };
        let result = net::timed(limit, &server, what, read, |e| match e {
            ReadError::Io(e) => {
                ServerError::transient(&server, format!("{what} failed: the connection broke"))
                    .with_source(e)
            }
            ReadError::Closed => ServerError::transient(
                &server,
                format!("{what} failed: the server closed the connection"),
            ),
            ReadError::Malformed(m) => {
                ServerError::failed(&server, format!("{what} failed: the server sent {m}"))
            }
        })
        .await;
        if result.is_err() {
            self.close();
        }
        result
    }
}

/// The first line of `rest` into `out`, dot-stuffed (RFC 5321 §4.5.2), its line end — CRLF, or a
/// bare CR or LF — written as CRLF; returns what follows it and whether it had a line end.
fn stuff_line<'m>(out: &mut Vec<u8>, rest: &'m [u8]) -> (&'m [u8], bool) {
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    out.extend_from_slice(&rest[..end]);
    let after = match &rest[end..] {
        [] => return (&[], false),
        [b'\r', b'\n', after @ ..] => after,
        [_, after @ ..] => after,
    };
    out.extend_from_slice(b"\r\n");
    (after, true)
}

enum ReadError {
    Io(std::io::Error),
    Closed,
    Malformed(&'static str),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// `250-text` / `250 text` / `250`: (code, is the last line, text).
fn parse_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return None,
    };
    Some((code, last, String::from_utf8_lossy(text).into_owned()))
}

/// The EHLO name: the host name when it is a valid domain, else the local address as a literal
/// (RFC 5321 §4.1.4).
fn hello_name(stream: &BufReader<net::Stream>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        return host.to_string();
    }
    match stream.get_ref().local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => format!("[{}]", a.ip()),
        Ok(std::net::SocketAddr::V6(a)) => format!("[IPv6:{}]", a.ip()),
        Err(_) => "[127.0.0.1]".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tls;

    /// Reply lines: codes, continuation, bare codes; anything else is refused.
    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_line(b"250-PIPELINING\r\n"),
            Some((250, false, "PIPELINING".into()))
        );
        assert_eq!(parse_line(b"250 ok\r\n"), Some((250, true, "ok".into())));
        assert_eq!(parse_line(b"354\r\n"), Some((354, true, String::new())));
        assert_eq!(parse_line(b"250 ok\n"), Some((250, true, "ok".into())));
        for bad in [
            &b"25 ok\r\n"[..],
            b"abc ok\r\n",
            b"250xok\r\n",
            b"650 ok\r\n",
            b"\r\n",
            b"250 ok",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    use tokio::net::TcpListener;

    /// A scripted server: the greeting, then for each expected burst of client bytes (read until
    /// it ends with `until`), the reply to write. Returns each burst as one read saw it.
    async fn scripted(
        script: Vec<(&'static str, &'static [u8])>,
    ) -> (Server, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            sock.write_all(b"220 test ESMTP\r\n").await.expect("greet");
            let mut bursts = Vec::new();
            for (until, reply) in script {
                let mut got = Vec::new();
                let mut buf = [0u8; 65536];
                while !String::from_utf8_lossy(&got).ends_with(until) {
                    let n = sock.read(&mut buf).await.expect("read");
                    if n == 0 {
                        bursts.push(format!("{}<closed>", String::from_utf8_lossy(&got)));
                        return bursts;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                bursts.push(String::from_utf8_lossy(&got).into_owned());
                sock.write_all(reply).await.expect("reply");
            }
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
            if !rest.is_empty() {
                bursts.push(String::from_utf8_lossy(&rest).into_owned());
            }
            bursts
        });
        let server = Server {
            host: "127.0.0.1".into(),
            port,
            tls: Tls::None,
            ca_file: None,
            mechanism: crate::config::Mechanism::Xoauth2,
            proxy: None,
        };
        (server, task)
    }

    fn envelope(to: &[&str]) -> Envelope {
        Envelope::new(
            Some("from@example.com".parse().expect("from")),
            to.iter().map(|t| t.parse().expect("to")).collect(),
        )
        .expect("envelope")
    }

    const EHLO_PIPELINING: &[u8] = b"250-test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n";

    /// With PIPELINING, MAIL, every RCPT and DATA leave in one write; the message is dot-stuffed,
    /// its bare line ends made CRLF, and ended with `.`.
    #[tokio::test]
    async fn pipelined_transaction() {
        let (server, task) = scripted(vec![
            ("\r\n", EHLO_PIPELINING),
            ("DATA\r\n", b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            ("\r\n.\r\n", b"250 2.0.0 queued\r\n"),
            ("QUIT\r\n", b"221 bye\r\n"),
        ])
        .await;
        let mut conn = Conn::open(&server).await.expect("open");
        assert!(conn.capabilities().pipelining);
        let reply = conn
            .send(
                &envelope(&["a@example.com", "b@example.com"]),
                b"Subject: x\r\n\r\n.dot\nbare\rend",
            )
            .await
            .expect("send");
        assert_eq!(reply.text(), "250 2.0.0 queued");
        conn.quit().await;
        let bursts = task.await.expect("server");
        assert_eq!(
            bursts[1],
            "MAIL FROM:<from@example.com> SIZE=27\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
            "one write"
        );
        assert_eq!(bursts[2], "Subject: x\r\n\r\n..dot\r\nbare\r\nend\r\n.\r\n");
    }

    /// Without PIPELINING each command waits for its reply; a refused recipient stops the
    /// transaction before DATA and the connection is reset for the next message.
    #[tokio::test]
    async fn refused_recipient_without_pipelining() {
        let (server, task) = scripted(vec![
            ("\r\n", b"250 test\r\n"),
            ("\r\n", b"250 ok\r\n"),
            ("\r\n", b"550 5.1.1 no such user\r\n"),
            ("RSET\r\n", b"250 ok\r\n"),
        ])
        .await;
        let mut conn = Conn::open(&server).await.expect("open");
        let e = conn
            .send(&envelope(&["nobody@example.com", "b@example.com"]), b"x")
            .await
            .expect_err("refused");
        assert!(matches!(e, ServerError::Failed { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("recipient <nobody@example.com> refused: 550 5.1.1 no such user"),
            "{e}"
        );
        assert!(conn.is_usable());
        drop(conn);
        let bursts = task.await.expect("server");
        assert_eq!(
            bursts[2], "RCPT TO:<nobody@example.com>\r\n",
            "one command per write"
        );
        assert_eq!(bursts[3], "RSET\r\n", "no second RCPT, no DATA");
    }

    /// Pipelined, a refused recipient after which the server still said 354 to DATA: the
    /// connection is dropped, so the other recipient gets nothing (not even an empty message).
    #[tokio::test]
    async fn refused_recipient_after_data_accepted_sends_nothing() {
        let (server, task) = scripted(vec![
            ("\r\n", EHLO_PIPELINING),
            (
                "DATA\r\n",
                b"250 ok\r\n450 4.2.1 busy\r\n250 ok\r\n354 go\r\n",
            ),
        ])
        .await;
        let mut conn = Conn::open(&server).await.expect("open");
        let e = conn
            .send(
                &envelope(&["busy@example.com", "b@example.com"]),
                b"secret body",
            )
            .await
            .expect_err("refused");
        assert!(e.is_transient(), "{e}");
        assert!(!conn.is_usable());
        drop(conn);
        let bursts = task.await.expect("server");
        assert!(!bursts.concat().contains("secret body"), "{bursts:?}");
    }

    proptest::proptest! {
        /// Whatever a message holds, the DATA stream has only CRLF line ends and one lone `.`
        /// line, at its end; un-stuffed as a server does, it gives back the message (line ends as
        /// CRLF, a final one added).
        #[test]
        fn dot_stuffing_round_trips(message in proptest::collection::vec(
            proptest::sample::select(b".\r\nab ".to_vec()), 0..200)) {
            let mut out = Vec::new();
            let mut rest = &message[..];
            let mut ended = true;
            while !rest.is_empty() {
                (rest, ended) = stuff_line(&mut out, rest);
            }
            if !ended {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            let text = String::from_utf8(out).expect("ASCII");
            let lines: Vec<&str> = text.strip_suffix("\r\n").expect("CRLF end").split("\r\n").collect();
            proptest::prop_assert_eq!(lines.last().copied(), Some("."));
            for line in &lines {
                proptest::prop_assert!(!line.contains('\r') && !line.contains('\n'));
            }
            let body: Vec<&str> = lines[..lines.len() - 1]
                .iter()
                .map(|l| {
                    proptest::prop_assert_ne!(*l, ".");
                    Ok(l.strip_prefix('.').unwrap_or(l))
                })
                .collect::<Result<_, _>>()?;
            let mut expected = String::from_utf8(message.clone())
                .expect("ASCII")
                .replace("\r\n", "\n")
                .replace('\r', "\n")
                .replace('\n', "\r\n");
            if !expected.is_empty() && !expected.ends_with("\r\n") {
                expected.push_str("\r\n");
            }
            let got: String = body.iter().map(|l| format!("{l}\r\n")).collect();
            proptest::prop_assert_eq!(got, expected);
        }

        /// Any bytes as a reply line or EHLO keywords: parsed or refused, never a panic.
        #[test]
        fn any_reply_line_is_handled(line in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = parse_line(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            let _ = Capabilities::parse(&Reply { code: 250, lines: vec!["x".into(), text] });
        }
    }

    /// A message over the server's SIZE is refused before anything of it is sent, with the
    /// limit in the error.
    #[tokio::test]
    async fn message_over_size_is_refused_locally() {
        let (server, task) = scripted(vec![("\r\n", EHLO_PIPELINING)]).await;
        let mut conn = Conn::open(&server).await.expect("open");
        let e = conn
            .send(&envelope(&["a@example.com"]), &[b'x'; 1001])
            .await
            .expect_err("too large");
        assert!(
            e.to_string()
                .contains("the message is 1001 bytes and the server accepts at most 1000"),
            "{e}"
        );
        drop(conn);
        let bursts = task.await.expect("server");
        assert!(!bursts.concat().contains("MAIL"), "{bursts:?}");
    }

    /// A server that never ends its reply line, or sends garbage, fails the send; it cannot
    /// make mailpilot read without end.
    #[tokio::test]
    async fn endless_or_garbage_replies_fail() {
        static LONG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut v = b"250-".to_vec();
            v.extend(std::iter::repeat_n(b'x', 100_000));
            v
        });
        let (server, _task) = scripted(vec![("\r\n", &LONG[..])]).await;
        let e = Conn::open(&server).await.err().expect("too long");
        assert!(
            e.to_string().contains("a reply line longer than 4 KiB"),
            "{e}"
        );
        let (server, _task) = scripted(vec![("\r\n", b"HTTP/1.1 400 Bad Request\r\n")]).await;
        let e = Conn::open(&server).await.err().expect("garbage");
        assert!(
            e.to_string().contains("a line that is not an SMTP reply"),
            "{e}"
        );
    }

    /// The EHLO keywords mailpilot uses, case-insensitively; the greeting line is not one.
    #[test]
    fn ehlo_keywords() {
        let reply = Reply {
            code: 250,
            lines: [
                "mx.example PIPELINING",
                "size 10240000",
                "8BITMIME",
                "STARTTLS",
                "AUTH XOAUTH2",
            ]
            .map(String::from)
            .to_vec(),
        };
        let caps = Capabilities::parse(&reply);
        assert_eq!(
            caps,
            Capabilities {
                starttls: true,
                pipelining: false,
                eight_bit_mime: true,
                smtputf8: false,
                size: Some(10_240_000),
            }
        );
    }
}

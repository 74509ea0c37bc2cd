//! The relay: an SMTP submission listener for programs that only know a user name and password
//! (printers, NAS boxes, Jenkins, Grafana, old applications). A message is accepted — 250 after
//! DATA — only once it is in the outbox on disk; the outbox's drain delivers it with the account's
//! OAuth2 token, as it does for `sendmail`.
//!
//! - [`proto`]: the protocol state machine, without I/O;
//! - [`auth`]: password hashes and the failed-login throttle;
//! - this file: listeners, connections (bounded lines, timeouts, STARTTLS), logins and the hand-off
//!   to the outbox. What happens is reported to a [`Report`]; nothing here prints.

pub mod auth;
pub mod proto;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::compose::submission::{self, SendmailArgs};
use crate::config::{Config, RewriteFrom, Sendmail};
use crate::error::clean;
use crate::net::{self, Stream};
use crate::outbox::{Head, Outbox};
use crate::secret::Secret;
use proto::{Body, Checked, Envelope, Login, Reply, Sender, Session, Step};

/// How long a failed login's 535 is held back: a password guesser gets a few tries a second per
/// connection at most, before the throttle stops it altogether.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);
/// The most read from the client at once.
const READ_CHUNK: usize = 64 * 1024;
/// The implicit-TLS handshake and the STARTTLS one.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the relay did, for the caller to print or log.
#[derive(Debug)]
pub enum Event {
    /// A listener is up.
    Listening {
        /// Its address.
        address: SocketAddr,
        /// How clients get TLS there.
        tls: &'static str,
    },
    /// A bound listener could not be served (it is closed).
    NotListening {
        /// Why.
        error: String,
    },
    /// A message is in the outbox (the client got 250).
    Queued {
        /// Its outbox id.
        id: String,
        /// The client.
        client: SocketAddr,
        /// The relay user (`None`: unauthenticated loopback).
        user: Option<String>,
        /// Recipients.
        recipients: usize,
        /// Bytes.
        size: usize,
    },
    /// A message or command was refused with this reply (From outside `allowed_from`, …).
    Refused {
        /// The client.
        client: SocketAddr,
        /// The relay user, if logged in.
        user: Option<String>,
        /// The reply sent.
        reply: String,
    },
    /// A wrong user name or password.
    LoginFailed {
        /// The client.
        client: SocketAddr,
        /// The user name given (cleaned).
        user: String,
        /// Failures from this address lately.
        failures: u32,
    },
    /// A login from an address with too many failures, refused without checking.
    Throttled {
        /// The client.
        client: SocketAddr,
    },
    /// A connection turned away: `max_connections` reached.
    Busy {
        /// The client.
        client: SocketAddr,
    },
    /// A connection ended without QUIT, while a message was being composed or sent.
    Lost {
        /// The client.
        client: SocketAddr,
        /// Why (timeout, closed, TLS failure).
        why: String,
    },
    /// The outbox could not be written: the client got 451 and keeps its message.
    NotQueued {
        /// The client.
        client: SocketAddr,
        /// The error.
        error: String,
    },
}

/// Where the relay's events go (the command prints them).
pub trait Report: Send + Sync {
    /// One event.
    fn report(&self, event: Event);
}

/// What a configuration reload can change: users, limits, timeouts, the loopback rule.
#[derive(Debug, Clone)]
struct Settings {
    relay: crate::config::Relay,
    hostname: String,
    /// Account → the From address of its own (for a message without From, and Message-IDs).
    account_from: BTreeMap<String, String>,
}

impl Settings {
    fn new(config: &Config) -> Option<Settings> {
        let relay = config.relay.clone()?;
        let hostname = relay.hostname.clone().unwrap_or_else(system_hostname);
        let account_from = config
            .accounts
            .values()
            .map(|a| {
                let from = a.from.as_deref().unwrap_or(&a.email);
                (a.name.clone(), submission::address_of(from).to_string())
            })
            .collect();
        Some(Settings {
            relay,
            hostname,
            account_from,
        })
    }
}

/// This host's name for the greeting (`/proc/sys/kernel/hostname`), or `localhost`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                .take(253)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// What every connection shares.
struct Shared {
    settings: RwLock<Settings>,
    outbox: Outbox,
    tls: Option<tokio_rustls::TlsAcceptor>,
    throttle: Mutex<auth::Throttle>,
    proven: Mutex<auth::Proven>,
    connections: Arc<Semaphore>,
    queued: Arc<Notify>,
    report: Arc<dyn Report>,
}

impl Shared {
    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How clients of a listener get TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain, with STARTTLS when a certificate is configured.
    Plain,
    /// TLS from the first byte.
    Implicit,
}

/// A bound relay, ready to serve (on any tokio runtime: the listeners are plain sockets until
/// [`Relay::serve`] registers them).
pub struct Relay {
    listeners: Vec<(std::net::TcpListener, Kind)>,
    shared: Arc<Shared>,
}

/// A handle on a running relay: reload its settings, learn when it queued a message.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Relay {
    /// Binds every listener of `[relay]` and loads the TLS certificate.
    ///
    /// # Errors
    /// No `[relay]` table, an address that cannot be bound (in use, not ours), or unusable TLS
    /// files.
    pub fn bind(config: &Config, outbox: Outbox, report: Arc<dyn Report>) -> Result<Relay> {
        let settings = Settings::new(config).context("the configuration has no [relay] table")?;
        let relay = &settings.relay;
        let tls = match &relay.tls {
            Some((cert, key)) => Some(net::server_tls(cert, key)?),
            None => None,
        };
        let mut listeners = Vec::new();
        for (addresses, kind) in [
            (&relay.listen, Kind::Plain),
            (&relay.listen_tls, Kind::Implicit),
        ] {
            for address in addresses {
                let listener = std::net::TcpListener::bind(address)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .with_context(|| format!("failed to listen on {address}"))?;
                listeners.push((listener, kind));
            }
        }
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(relay.max_connections)),
            settings: RwLock::new(settings),
            outbox,
            tls,
            throttle: Mutex::default(),
            proven: Mutex::default(),
            queued: Arc::new(Notify::new()),
            report,
        });
        Ok(Relay { listeners, shared })
    }

    /// A handle for reloads and hand-off notices.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Accepts connections until the future is dropped (each connection is its own task on the
    /// runtime that runs this).
    pub async fn serve(self) {
        let loops = self.listeners.into_iter().filter_map(|(listener, kind)| {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    self.shared.report.report(Event::NotListening {
                        error: e.to_string(),
                    });
                    return None;
                }
            };
            let shared = self.shared.clone();
            let tls = match (kind, shared.tls.is_some()) {
                (Kind::Implicit, _) => "implicit TLS",
                (Kind::Plain, true) => "STARTTLS",
                (Kind::Plain, false) => "no TLS",
            };
            if let Ok(address) = listener.local_addr() {
                shared.report.report(Event::Listening { address, tls });
            }
            Some(accept_loop(listener, kind, shared))
        });
        futures_util::future::join_all(loops).await;
    }
}

impl Handle {
    /// Woken each time a message is put in the outbox: the drain delivers it at once.
    pub fn queued(&self) -> Arc<Notify> {
        self.shared.queued.clone()
    }

    /// New users, limits and timeouts from a reloaded configuration (listeners, the certificate
    /// and `max_connections` stay until a restart). A configuration without `[relay]` changes
    /// nothing.
    pub fn reload(&self, config: &Config) {
        if let Some(settings) = Settings::new(config) {
            *self
                .shared
                .settings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
            self.shared
                .proven
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }
}

async fn accept_loop(listener: TcpListener, kind: Kind, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared.report.report(Event::Busy { client: peer });
            if kind == Kind::Plain {
                tokio::spawn(async move {
                    let mut tcp = tcp;
                    let busy = b"421 4.7.0 Too many connections, try again later\r\n";
                    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(busy)).await;
                });
            }
            continue;
        };
        let local = tcp.local_addr().ok();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let listener_loopback = local.is_some_and(|a| a.ip().is_loopback());
            if let Err(why) = connection(tcp, peer, kind, listener_loopback, &shared).await {
                shared.report.report(Event::Lost { client: peer, why });
            }
        });
    }
}

/// Serves one client. `Err` carries why a connection ended badly while it mattered (in the middle
/// of a message, a failed TLS handshake); a client that simply goes away between messages is
/// `Ok`.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    listener_loopback: bool,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let settings = shared.settings();
    let stream = match (kind, &shared.tls) {
        (Kind::Implicit, Some(acceptor)) => net::accept_tls(acceptor, tcp, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?,
        _ => Stream::Plain(tcp),
    };
    let anonymous = settings
        .relay
        .anonymous
        .as_ref()
        .filter(|_| peer.ip().is_loopback())
        .map(|a| Sender {
            user: None,
            account: a.account.clone(),
            allowed_from: a.allowed_from.clone(),
        });
    let session = Session::new(proto::Settings {
        hostname: settings.hostname.clone(),
        max_message_size: settings.relay.max_message_size,
        max_recipients: settings.relay.max_recipients,
        starttls: kind == Kind::Plain && shared.tls.is_some(),
        tls: kind == Kind::Implicit,
        logins: !settings.relay.users.is_empty(),
        // With a certificate, passwords never travel in the clear, even over loopback; without
        // one every listener is on loopback (validated) and AUTH is offered there.
        auth_without_tls: listener_loopback && shared.tls.is_none(),
        anonymous,
    });
    let mut conn = Conn {
        stream,
        input: Vec::with_capacity(4096),
        output: Vec::with_capacity(1024),
        peer,
        idle: settings.relay.idle_timeout,
        command: settings.relay.command_timeout,
        shared: shared.clone(),
        settings,
        user: None,
    };
    conn.run(session).await
}

/// One client connection: the stream, what was read and not yet handled, replies not yet written.
struct Conn {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    peer: SocketAddr,
    idle: Duration,
    command: Duration,
    shared: Arc<Shared>,
    settings: Settings,
    user: Option<String>,
}

/// What the next command line is.
enum Line {
    /// A line (its length, with the line end) at the start of the input.
    Complete(usize),
    /// A line over [`proto::MAX_LINE`], skipped.
    TooLong,
    /// The client closed the connection.
    Closed,
}

impl Conn {
    async fn run(&mut self, mut session: Session) -> Result<(), String> {
        session.greeting().write_to(&mut self.output);
        loop {
            let line = match self.next_line().await {
                Ok(line) => line,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    session.timed_out().write_to(&mut self.output);
                    let _ = self.flush().await;
                    return if session.in_transaction() {
                        Err("timed out while a message was being composed".into())
                    } else {
                        Ok(())
                    };
                }
                Err(e) => return lost(&session, &e),
            };
            let step = match line {
                Line::Complete(n) => {
                    let text = self.input[..n]
                        .strip_suffix(b"\n")
                        .unwrap_or(&self.input[..n]);
                    let text = text.strip_suffix(b"\r").unwrap_or(text).to_vec();
                    self.input.drain(..n);
                    session.command(&text)
                }
                Line::TooLong => session.line_too_long(),
                Line::Closed => {
                    return if session.in_transaction() {
                        Err("the client closed the connection in the middle of a message".into())
                    } else {
                        Ok(())
                    };
                }
            };
            match self.step(&mut session, step).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return lost(&session, &e),
            }
        }
    }

    /// Carries out one step; `false` when the connection is done.
    async fn step(&mut self, session: &mut Session, step: Step) -> std::io::Result<bool> {
        match step {
            Step::Reply(reply) => reply.write_to(&mut self.output),
            Step::Close(reply) => {
                reply.write_to(&mut self.output);
                self.flush().await?;
                let _ = self.stream.shutdown().await;
                return Ok(false);
            }
            Step::StartTls(reply) => {
                reply.write_to(&mut self.output);
                self.flush().await?;
                // Commands pipelined after STARTTLS came in the clear: dropped (RFC 3207 §6).
                self.input.clear();
                self.starttls().await?;
                session.tls_started();
            }
            Step::Login(login) => {
                let reply = self.login(session, login).await;
                reply.write_to(&mut self.output);
            }
            Step::Data(reply) => {
                reply.write_to(&mut self.output);
                self.flush().await?;
                let reply = self.data(session).await?;
                if reply.is_refusal() {
                    self.shared.report.report(Event::Refused {
                        client: self.peer,
                        user: self.user.clone(),
                        reply: reply.lines.join(" "),
                    });
                }
                reply.write_to(&mut self.output);
            }
        }
        Ok(true)
    }

    /// The next command line in `input`, reading as needed. Replies are written before waiting
    /// for the client (PIPELINING: a batch of commands gets its replies in one write).
    async fn next_line(&mut self) -> std::io::Result<Line> {
        let mut skipping = false;
        let mut started: Option<Instant> = None;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.input) {
                if skipping || i > proto::MAX_LINE {
                    self.input.drain(..=i);
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(i + 1));
            }
            if self.input.len() > proto::MAX_LINE {
                skipping = true;
                self.input.clear();
            }
            self.flush().await?;
            let now = Instant::now();
            let deadline = match (self.input.is_empty() && !skipping, started) {
                (true, _) => now + self.idle,
                (false, Some(t)) => (t + self.command).min(now + self.idle),
                (false, None) => {
                    started = Some(now);
                    (now + self.command).min(now + self.idle)
                }
            };
            if !self.fill(deadline).await? {
                return Ok(Line::Closed);
            }
        }
    }

    /// Reads more into `input`; `false` at the end of the stream.
    async fn fill(&mut self, deadline: Instant) -> std::io::Result<bool> {
        self.input.reserve(READ_CHUNK);
        let read = self.stream.read_buf(&mut self.input);
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client was silent too long",
            )),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.command, write).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client does not read its replies",
                ))
            }
        }
        self.output.clear();
        Ok(())
    }

    async fn starttls(&mut self) -> std::io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(std::io::Error::other("STARTTLS on a TLS connection"));
        };
        let Some(acceptor) = &self.shared.tls else {
            return Err(std::io::Error::other("STARTTLS without a certificate"));
        };
        self.stream = net::accept_tls(acceptor, tcp, HANDSHAKE_TIMEOUT).await?;
        Ok(())
    }

    /// Checks a login: refused without a check while the client's address is throttled; a wrong
    /// password counts against the address and is answered late.
    async fn login(&mut self, session: &mut Session, login: Login) -> Reply {
        let ip = self.peer.ip();
        let blocked = lock(&self.shared.throttle).blocked(ip, Instant::now());
        if blocked {
            self.shared
                .report
                .report(Event::Throttled { client: self.peer });
            return session.checked(Checked::Throttled);
        }
        let user = self.settings.relay.users.get(&login.user).cloned();
        let accepted = self.check_password(user.as_ref(), &login).await;
        match user.filter(|_| accepted) {
            Some(user) => {
                lock(&self.shared.throttle).succeeded(ip);
                self.user = Some(login.user.clone());
                session.checked(Checked::Accepted(Sender {
                    user: Some(login.user),
                    account: user.account,
                    allowed_from: user.allowed_from,
                }))
            }
            None => {
                let failures = lock(&self.shared.throttle).failed(ip, Instant::now());
                self.shared.report.report(Event::LoginFailed {
                    client: self.peer,
                    user: clean(&login.user, 80),
                    failures,
                });
                tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                session.checked(Checked::Refused)
            }
        }
    }

    /// Whether the password is right: remembered from an earlier login of this process, or
    /// checked by argon2 off the runtime thread. An unknown user costs the same argon2 run (so
    /// the reply's timing does not tell which names exist).
    async fn check_password(&self, user: Option<&crate::config::RelayUser>, login: &Login) -> bool {
        let known = user.and_then(|u| u.password_hash.as_ref());
        let proven = |hash: &Secret| {
            lock(&self.shared.proven).knows(&login.user, hash.expose(), &login.password)
        };
        if known.is_some_and(proven) {
            return true;
        }
        let hash = known.map_or_else(|| dummy_hash().to_string(), |h| h.expose().to_string());
        let password = login.password.clone();
        let right = tokio::task::spawn_blocking(move || auth::verify(&hash, &password))
            .await
            .unwrap_or(false);
        match known {
            Some(hash) if right => {
                lock(&self.shared.proven).remember(&login.user, hash.expose(), &login.password);
                true
            }
            _ => false,
        }
    }

    /// Reads the message after 354 and hands it to the outbox; the reply to send.
    async fn data(&mut self, session: &mut Session) -> std::io::Result<Reply> {
        let mut body = Body::new(self.settings.relay.max_message_size);
        let deadline = Instant::now() + self.command;
        loop {
            let used = body.feed(&self.input);
            self.input.drain(..used);
            if body.is_done() {
                break;
            }
            let wait = deadline.min(Instant::now() + self.idle);
            if !self.fill(wait).await? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during DATA",
                ));
            }
        }
        Ok(match session.data_end(&body) {
            Ok(envelope) => self.hand_off(envelope, body.into_message()).await,
            Err(reply) => reply,
        })
    }

    /// Puts the message in the outbox (Date and Message-ID added when missing); 250 only once it
    /// is on disk. A From header outside the sender's `allowed_from` is refused.
    async fn hand_off(&self, envelope: Envelope, message: Vec<u8>) -> Reply {
        let Envelope { sender, to, .. } = envelope;
        let account_from = self
            .settings
            .account_from
            .get(&sender.account)
            .cloned()
            .unwrap_or_default();
        let plain = Sendmail {
            rewrite_from: RewriteFrom::Never,
            ..Sendmail::default()
        };
        let ctx = submission::Context {
            settings: &plain,
            account_from: &account_from,
            date: chrono::Local::now().to_rfc2822(),
            unique: format!("{}.relay", crate::clock::unique_stamp()),
        };
        let args = SendmailArgs {
            recipients: to,
            ..SendmailArgs::default()
        };
        let prepared = match submission::prepare(&message, &args, &ctx) {
            Ok(p) => p,
            Err(e) => return reply(554, &format!("5.6.0 {}", e.0)),
        };
        drop(message);
        if !sender.allowed_from.allows(&prepared.from) {
            return reply(
                550,
                &proto::not_allowed(&clean(&prepared.from, 256), &sender),
            );
        }
        let head = Head {
            version: 1,
            account: sender.account,
            from: prepared.from,
            to: prepared.recipients,
            queued_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.queue(head, prepared.message).await
    }

    /// Puts the message in the outbox off the runtime thread; 250 once it is on disk, 451 (the
    /// client keeps it and tries again) when it could not be written.
    async fn queue(&self, head: Head, message: Vec<u8>) -> Reply {
        let outbox = self.shared.outbox.clone();
        let recipients = head.to.len();
        let size = message.len();
        let error = match outbox.put(head, message).await {
            Ok(id) => {
                self.shared.queued.notify_one();
                let text = format!("2.0.0 Ok: queued as {id}");
                self.shared.report.report(Event::Queued {
                    id,
                    client: self.peer,
                    user: self.user.clone(),
                    recipients,
                    size,
                });
                return reply(250, &text);
            }
            Err(e) => crate::error::error_text(e.as_ref()),
        };
        self.shared.report.report(Event::NotQueued {
            client: self.peer,
            error,
        });
        reply(
            451,
            "4.3.0 Local error: the message was not queued, try again later",
        )
    }
}

fn reply(code: u16, text: &str) -> Reply {
    Reply {
        code,
        lines: vec![text.to_string()],
    }
}

/// How a connection that failed ends: worth a report while a message was being composed, or
/// when it was not the client simply going away (a TLS handshake that failed, a timeout).
fn lost(session: &Session, e: &std::io::Error) -> Result<(), String> {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    let went_away = matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe);
    if session.in_transaction() || !went_away {
        Err(e.to_string())
    } else {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A hash no password matches, checked for unknown user names.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        auth::hash(&Secret::new("mailpilot: no such relay user")).unwrap_or_default()
    })
}

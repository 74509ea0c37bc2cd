//! IMAP on async-imap over tokio-rustls: connect (implicit TLS or STARTTLS), read the greeting,
//! AUTHENTICATE with XOAUTH2 or OAUTHBEARER (answering the server's error continuation so its final
//! NO can be read and decoded), and the few commands polling needs. Every network step has a
//! timeout. A rejected token is refreshed once and the login retried once (see [`crate::mail_auth`]).

mod budget;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures_util::{FutureExt, TryStreamExt};

use crate::config::{Account, Protocol, Server, Tls};
use crate::error::{clean, error_text, BoxError, ServerError, SERVER_TEXT_MAX};
use crate::mail_auth::{self, Login, LoginFailure};
use crate::net::{self, Stream, COMMAND_TIMEOUT};
use crate::oauth::{TokenSource, TokenStore};
use crate::sasl::{self, Rejection};
use crate::secret::Secret;
use budget::{Budget, Budgeted};

/// Fetching one message body (a large attachment on a slow link).
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// What the server may send in answer to an ordinary command (login, SELECT, STORE, IDLE…):
/// real answers are a few KB.
const COMMAND_BUDGET: u64 = 1024 * 1024;
/// What the server may send in answer to `UID SEARCH`: about 8 bytes a message, so this allows
/// millions of messages.
const SEARCH_BUDGET: u64 = 64 * 1024 * 1024;
/// What a FETCH answer may add to the message itself (the response around the literal, flags).
const FETCH_SLACK: u64 = 64 * 1024;
/// How many UIDs one size query names (a command line stays short).
const SIZE_BATCH: usize = 500;

/// An authenticated IMAP session.
pub struct Imap {
    session: async_imap::Session<Budgeted>,
    /// What the server may still send for the command in flight.
    budget: Budget,
    server: String,
    /// When to reconnect with a fresh token (unix seconds), before this one expires.
    pub renew_at: u64,
    /// Asked for the first time a command depends on it: a poll that only reads never needs it.
    caps: Option<Caps>,
}

/// The capabilities mailpilot acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    can_move: bool,
    can_uid_expunge: bool,
    can_idle: bool,
}

/// How a mailbox is opened: read-only (EXAMINE) when nothing will change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// EXAMINE.
    ReadOnly,
    /// SELECT.
    ReadWrite,
}

/// A fetched message, left in the buffer its answer arrived in (not copied out of it).
pub struct Raw(async_imap::types::Fetch);

impl Raw {
    fn of(fetch: async_imap::types::Fetch) -> Option<Raw> {
        fetch.body().is_some().then_some(Raw(fetch))
    }

    /// The message as the server sent it.
    pub fn bytes(&self) -> &[u8] {
        self.0.body().unwrap_or_default()
    }
}

/// The answer of [`Imap::bodies`], read message by message.
pub struct Bodies<'a> {
    stream: std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = async_imap::error::Result<async_imap::types::Fetch>>
                + Send
                + 'a,
        >,
    >,
    server: String,
}

impl Bodies<'_> {
    /// The next message that arrived with its body: (UID, raw message); `None` at the end.
    ///
    /// # Errors
    /// The network, a timeout, or an answer over its budget.
    pub async fn next(&mut self) -> Result<Option<(u32, Raw)>, ServerError> {
        loop {
            let item = timed(
                FETCH_TIMEOUT,
                &self.server,
                "UID FETCH",
                self.stream.try_next(),
            )
            .await?;
            let Some(fetch) = item else {
                return Ok(None);
            };
            if let (Some(uid), Some(raw)) = (fetch.uid, Raw::of(fetch)) {
                return Ok(Some((uid, raw)));
            }
        }
    }

    /// Reads (and drops) the rest of the answer.
    ///
    /// # Errors
    /// As [`Bodies::next`].
    pub async fn finish(mut self) -> Result<(), ServerError> {
        while self.next().await?.is_some() {}
        Ok(())
    }
}

/// Why an IDLE ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The server reported a change (new mail, expunge, flags).
    NewData,
    /// The wait reached its deadline (re-IDLE or reconnect time).
    Deadline,
    /// Shutdown was requested.
    Shutdown,
}

/// A selected mailbox's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT (the UID the next message will get).
    pub uidnext: u32,
}

/// Records the server's error continuation while answering it, for the final message.
struct OAuthAuthenticator {
    initial: Option<Secret>,
    cancel: &'static [u8],
    challenge: Arc<Mutex<Option<Vec<u8>>>>,
}

impl async_imap::Authenticator for OAuthAuthenticator {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        match self.initial.take() {
            Some(initial) => initial.expose().as_bytes().to_vec(),
            None => {
                if let Ok(mut c) = self.challenge.lock() {
                    *c = Some(challenge.to_vec());
                }
                self.cancel.to_vec()
            }
        }
    }
}

/// Checks that `flag` is an IMAP flag or keyword (RFC 3501 `flag`): an optional `\` and an atom —
/// printable ASCII without space, `(){%*"\]`. Anything else would be written into a command
/// unquoted (a CR/LF would start a second command).
///
/// # Errors
/// What is wrong with it.
pub fn check_flag(flag: &str) -> Result<(), String> {
    let atom = flag.strip_prefix('\\').unwrap_or(flag);
    let bad = |c: char| !c.is_ascii_graphic() || "(){%*\"\\]".contains(c);
    match atom.chars().find(|c| bad(*c)) {
        _ if atom.is_empty() => Err(format!("{flag:?} is not an IMAP flag (empty)")),
        Some(c) => Err(format!(
            "{flag:?} is not an IMAP flag or keyword: {c:?} is not allowed (use letters, digits and -_.$, or a system flag such as \\Flagged)"
        )),
        None => Ok(()),
    }
}

/// Checks that IMAP SEARCH `criteria` hold no control characters: they are sent as written (so
/// that `FROM "a@x"` works), and a CR/LF would end the command and start another.
///
/// # Errors
/// What is wrong with them.
pub fn check_search(criteria: &str) -> Result<(), String> {
    if criteria.chars().any(char::is_control) {
        return Err(format!(
            "{criteria:?}: search criteria may not contain control characters (line breaks, NUL)"
        ));
    }
    if criteria.trim().is_empty() {
        return Err("empty search criteria".into());
    }
    Ok(())
}

/// Runs `fut` with a timeout, classifying its error.
async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
    limit: Duration,
    server: &str,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ServerError> {
    net::timed(limit, server, what, fut, |e| {
        classify(server, what, Box::new(e))
    })
    .await
}

/// NO and BAD replies are permanent for the operation; network trouble is transient. The
/// server's words are cleaned and cut before they reach a message.
fn classify(server: &str, what: &str, e: BoxError) -> ServerError {
    let permanent = matches!(
        e.downcast_ref::<async_imap::error::Error>(),
        Some(
            async_imap::error::Error::No(_)
                | async_imap::error::Error::Bad(_)
                | async_imap::error::Error::Validate(_)
        )
    );
    let text = describe(e.as_ref());
    // A server that floods is not going to stop on a retry.
    if permanent || budget::is_over_budget(e.as_ref()) {
        ServerError::failed(server, format!("{what} failed: {text}"))
    } else {
        ServerError::transient(server, format!("{what} failed")).with_source(text)
    }
}

/// An IMAP error as a person can read it: a response that would not parse is shown as the text
/// the server sent (async-imap prints it as a list of byte values), and everything is cleaned of
/// control characters and cut to [`SERVER_TEXT_MAX`].
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(async_imap::error::Error::Io(io)) = e.downcast_ref::<async_imap::error::Error>() {
        if io.kind() == std::io::ErrorKind::UnexpectedEof || io.to_string().is_empty() {
            return "the server closed the connection".into();
        }
    }
    if let Some(async_imap::error::Error::ConnectionLost) =
        e.downcast_ref::<async_imap::error::Error>()
    {
        return "the server closed the connection".into();
    }
    let text = error_text(e);
    let Some(start) = text.find("input: [") else {
        return clean(&text, SERVER_TEXT_MAX);
    };
    let list = &text[start + "input: [".len()..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    let bytes: Vec<u8> = list
        .split(',')
        .filter_map(|b| b.trim().parse::<u8>().ok())
        .take(SERVER_TEXT_MAX)
        .collect();
    format!(
        "the server sent something that is not IMAP: \"{}\"",
        clean(&String::from_utf8_lossy(&bytes), 200)
    )
}

impl Imap {
    /// Connects to the account's IMAP server and logs in.
    ///
    /// # Errors
    /// [`ServerError`] or an [`crate::error::AuthError`].
    pub async fn open<S: TokenStore>(
        account: &Account,
        tokens: &TokenSource<'_, S>,
    ) -> Result<Imap> {
        let server = account.server(Protocol::Imap)?;
        let name = server.address();
        let login = Login {
            account,
            server: &name,
            refused: |challenge, reply: String| {
                mail_auth::refused(account, Protocol::Imap, &name, challenge, &reply)
            },
        };
        let ((session, budget), renew_at) =
            mail_auth::with_one_refresh(login, tokens, |token| async move {
                self::login(account, server, &token).await
            })
            .await?;
        budget.set(COMMAND_BUDGET);
        Ok(Imap {
            budget,
            session,
            server: name,
            renew_at,
            caps: None,
        })
    }

    /// The server's capabilities, asked once.
    async fn caps(&mut self) -> Result<Caps, ServerError> {
        if let Some(caps) = self.caps {
            return Ok(caps);
        }
        self.budget.set(COMMAND_BUDGET);
        let found = timed(
            COMMAND_TIMEOUT,
            &self.server,
            "CAPABILITY",
            self.session.capabilities(),
        )
        .await?;
        self.drain();
        let caps = Caps {
            can_move: found.has_str("MOVE"),
            can_uid_expunge: found.has_str("UIDPLUS"),
            can_idle: found.has_str("IDLE"),
        };
        self.caps = Some(caps);
        Ok(caps)
    }

    /// `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Opens `mailbox`: SELECT (read-write) when actions will change it, else EXAMINE, which the
    /// server can serve without preparing for changes. Fetching uses `BODY.PEEK` either way, so
    /// reading alone changes no flags.
    ///
    /// # Errors
    /// The mailbox does not exist (a [`ServerError::Failed`] naming it) or the network fails.
    pub async fn select(&mut self, mailbox: &str, access: Access) -> Result<Selected, ServerError> {
        self.budget.set(COMMAND_BUDGET);
        let (verb, open) = match access {
            Access::ReadWrite => ("SELECT", self.session.select(mailbox).left_future()),
            Access::ReadOnly => ("EXAMINE", self.session.examine(mailbox).right_future()),
        };
        let mb = timed(
            COMMAND_TIMEOUT,
            &self.server,
            &format!("{verb} {mailbox}"),
            open,
        )
        .await?;
        self.drain();
        self.identity(&mb, mailbox)
    }

    /// `STATUS mailbox (UIDNEXT UIDVALIDITY)`: what a poll needs to know whether anything
    /// arrived, without opening the mailbox (cheap on every server; SELECT of a large mailbox is
    /// not, on Exchange and Gmail).
    ///
    /// # Errors
    /// The mailbox does not exist, the server omits a value, or the network fails.
    pub async fn status(&mut self, mailbox: &str) -> Result<Selected, ServerError> {
        self.budget.set(COMMAND_BUDGET);
        let mb = timed(
            COMMAND_TIMEOUT,
            &self.server,
            &format!("STATUS {mailbox}"),
            self.session.status(mailbox, "(UIDNEXT UIDVALIDITY)"),
        )
        .await?;
        self.drain();
        self.identity(&mb, mailbox)
    }

    /// The UIDVALIDITY and UIDNEXT a SELECT or STATUS answer reported for `mailbox`.
    fn identity(
        &self,
        mb: &async_imap::types::Mailbox,
        mailbox: &str,
    ) -> Result<Selected, ServerError> {
        let missing = |what: &str| {
            ServerError::failed(
                &self.server,
                format!("the server did not report {what} for {mailbox}"),
            )
        };
        Ok(Selected {
            uidvalidity: mb.uid_validity.ok_or_else(|| missing("UIDVALIDITY"))?,
            uidnext: mb.uid_next.ok_or_else(|| missing("UIDNEXT"))?,
        })
    }

    /// UIDs above `after` matching `criteria` (IMAP SEARCH syntax), ascending.
    ///
    /// # Errors
    /// Bad criteria (NO/BAD) or the network.
    pub async fn uids_after(
        &mut self,
        after: u32,
        criteria: Option<&str>,
    ) -> Result<Vec<u32>, ServerError> {
        if let Some(c) = criteria {
            check_search(c).map_err(|e| ServerError::failed(&self.server, e))?;
        }
        let query = match criteria {
            Some(c) => format!("UID {}:* {c}", after.saturating_add(1)),
            None => format!("UID {}:*", after.saturating_add(1)),
        };
        self.budget.set(SEARCH_BUDGET);
        let found = timed(
            COMMAND_TIMEOUT,
            &self.server,
            &format!("UID SEARCH {query}"),
            self.session.uid_search(&query),
        )
        .await?;
        self.drain();
        // `n:*` always matches the highest UID, even when it is below n.
        let mut uids: Vec<u32> = found.into_iter().filter(|u| *u > after).collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// The sizes (RFC822.SIZE) of messages `uids`, in one round trip per `SIZE_BATCH` UIDs;
    /// a UID the server does not answer for is missing from the map.
    ///
    /// # Errors
    /// The network, or an answer over its budget.
    pub async fn sizes(&mut self, uids: &[u32]) -> Result<BTreeMap<u32, u64>, ServerError> {
        let mut sizes = BTreeMap::new();
        let server = self.server.clone();
        for batch in uids.chunks(SIZE_BATCH) {
            let set = uid_set(batch);
            // ~100 bytes of answer per message, whatever the server pads it with.
            self.budget.set(COMMAND_BUDGET + 200 * batch.len() as u64);
            let answer = async {
                let mut stream = self.session.uid_fetch(&set, "(UID RFC822.SIZE)").await?;
                let mut found = Vec::new();
                while let Some(f) = stream.try_next().await? {
                    if let (Some(uid), Some(size)) = (f.uid, f.size) {
                        found.push((uid, u64::from(size)));
                    }
                }
                Ok::<_, async_imap::error::Error>(found)
            };
            let what = format!("UID FETCH {set} (RFC822.SIZE)");
            for (uid, size) in timed(COMMAND_TIMEOUT, &server, &what, answer).await? {
                if batch.binary_search(&uid).is_ok() {
                    sizes.insert(uid, size);
                }
            }
            self.drain();
        }
        Ok(sizes)
    }

    /// The UIDs above `after` and their sizes, in one `UID FETCH after+1:* (RFC822.SIZE)` (no
    /// SEARCH first); `uidnext` bounds how many answers may come.
    ///
    /// # Errors
    /// The network, or an answer over its budget.
    pub async fn sizes_after(
        &mut self,
        after: u32,
        uidnext: u32,
    ) -> Result<BTreeMap<u32, u64>, ServerError> {
        let server = self.server.clone();
        let set = format!("{}:*", after.saturating_add(1));
        let expected = u64::from(uidnext.saturating_sub(after));
        self.budget.set(COMMAND_BUDGET + 200 * expected);
        let answer = async {
            let mut stream = self.session.uid_fetch(&set, "(UID RFC822.SIZE)").await?;
            let mut found = BTreeMap::new();
            while let Some(f) = stream.try_next().await? {
                // `n:*` always names the highest UID, even when it is below n.
                if let (Some(uid), Some(size)) = (f.uid, f.size) {
                    if uid > after {
                        found.insert(uid, u64::from(size));
                    }
                }
            }
            Ok::<_, async_imap::error::Error>(found)
        };
        let what = format!("UID FETCH {set} (RFC822.SIZE)");
        let sizes = timed(COMMAND_TIMEOUT, &server, &what, answer).await?;
        self.drain();
        Ok(sizes)
    }

    /// The messages `uids` (ascending, with their `total` announced size) in one `UID FETCH`, as
    /// they arrive: one body is held at a time, and the server may send little more than it
    /// announced. Read the answer to its end ([`Bodies::finish`]) before the next command.
    ///
    /// # Errors
    /// The network.
    pub async fn bodies(&mut self, uids: &[u32], total: u64) -> Result<Bodies<'_>, ServerError> {
        let set = uid_set(uids);
        let server = self.server.clone();
        self.budget.set(
            total
                .saturating_add(FETCH_SLACK.saturating_mul(uids.len() as u64))
                .saturating_add(COMMAND_BUDGET),
        );
        let what = format!("UID FETCH {set}");
        let stream = timed(
            COMMAND_TIMEOUT,
            &server,
            &what,
            self.session.uid_fetch(set.clone(), "(UID BODY.PEEK[])"),
        )
        .await?;
        Ok(Bodies {
            stream: Box::pin(stream),
            server,
        })
    }

    /// The raw message `uid` of `size` bytes (as [`Imap::sizes`] reported), fetched with
    /// `BODY.PEEK[]` (flags unchanged); `None` if the answer did not carry it. Only that message's
    /// body is kept, and the server may send little more than `size` bytes.
    ///
    /// # Errors
    /// The network, or an answer over its budget (a server sending more than it announced).
    pub async fn fetch(&mut self, uid: u32, size: u64) -> Result<Option<Raw>, ServerError> {
        let server = self.server.clone();
        let what = format!("UID FETCH {uid}");
        self.budget.set(size.saturating_add(FETCH_SLACK));
        let answer = async {
            let mut stream = self
                .session
                .uid_fetch(uid.to_string(), "(UID BODY.PEEK[])")
                .await?;
            let mut body = None;
            while let Some(f) = stream.try_next().await? {
                if body.is_none() && f.uid == Some(uid) {
                    body = Raw::of(f);
                }
            }
            Ok::<_, async_imap::error::Error>(body)
        };
        let body = timed(FETCH_TIMEOUT, &server, &what, answer).await?;
        self.drain();
        Ok(body)
    }

    /// Whether the mailbox still lists message `uid` (`UID SEARCH UID n`).
    ///
    /// # Errors
    /// The network.
    pub async fn has(&mut self, uid: u32) -> Result<bool, ServerError> {
        self.budget.set(COMMAND_BUDGET);
        let server = self.server.clone();
        let query = format!("UID {uid}");
        let found = timed(
            COMMAND_TIMEOUT,
            &server,
            &format!("UID SEARCH {query}"),
            self.session.uid_search(&query),
        )
        .await?;
        self.drain();
        Ok(found.contains(&uid))
    }

    /// Adds `flag` (`\Seen`, `\Flagged`, a keyword) to message `uid`.
    ///
    /// # Errors
    /// The server refuses or the network fails.
    pub async fn add_flag(&mut self, uid: u32, flag: &str) -> Result<(), ServerError> {
        check_flag(flag).map_err(|e| ServerError::failed(&self.server, e))?;
        self.budget.set(COMMAND_BUDGET);
        let server = self.server.clone();
        let store = async {
            let stream = self
                .session
                .uid_store(uid.to_string(), format!("+FLAGS.SILENT ({flag})"))
                .await?;
            stream.try_collect::<Vec<_>>().await
        };
        timed(
            COMMAND_TIMEOUT,
            &server,
            &format!("UID STORE {uid} +FLAGS ({flag})"),
            store,
        )
        .await?;
        self.drain();
        Ok(())
    }

    /// Moves message `uid` to `mailbox`: `UID MOVE` where the server has MOVE, else COPY, mark
    /// deleted, expunge.
    ///
    /// # Errors
    /// The target mailbox does not exist, the server refuses, or the network fails.
    pub async fn move_to(&mut self, uid: u32, mailbox: &str) -> Result<(), ServerError> {
        self.budget.set(COMMAND_BUDGET);
        let server = self.server.clone();
        if self.caps().await?.can_move {
            self.budget.set(COMMAND_BUDGET);
            timed(
                COMMAND_TIMEOUT,
                &server,
                &format!("UID MOVE {uid} {mailbox}"),
                self.session.uid_mv(uid.to_string(), mailbox),
            )
            .await?;
            self.drain();
            return Ok(());
        }
        timed(
            COMMAND_TIMEOUT,
            &server,
            &format!("UID COPY {uid} {mailbox}"),
            self.session.uid_copy(uid.to_string(), mailbox),
        )
        .await?;
        self.delete(uid).await
    }

    /// Marks message `uid` deleted and expunges it (only it, where the server has UIDPLUS).
    ///
    /// # Errors
    /// The server refuses or the network fails.
    pub async fn delete(&mut self, uid: u32) -> Result<(), ServerError> {
        self.add_flag(uid, "\\Deleted").await?;
        self.budget.set(COMMAND_BUDGET);
        let server = self.server.clone();
        let can_uid_expunge = self.caps().await?.can_uid_expunge;
        self.budget.set(COMMAND_BUDGET);
        let expunge = async {
            if can_uid_expunge {
                self.session
                    .uid_expunge(uid.to_string())
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            } else {
                self.session.expunge().await?.try_collect::<Vec<_>>().await
            }
        };
        timed(
            COMMAND_TIMEOUT,
            &server,
            &format!("expunging UID {uid}"),
            expunge,
        )
        .await?;
        self.drain();
        Ok(())
    }

    /// Whether the server supports IDLE (RFC 2177).
    ///
    /// # Errors
    /// The network (the first time it is asked).
    pub async fn can_idle(&mut self) -> Result<bool, ServerError> {
        Ok(self.caps().await?.can_idle)
    }

    /// Waits in IDLE until the server reports a change, `deadline` passes, or `shutdown` turns
    /// true. Consumes the session and gives it back, ready for commands.
    ///
    /// # Errors
    /// The connection dropped or the server said BYE ([`ServerError::Transient`]); the session is
    /// gone then.
    pub async fn idle(
        self,
        deadline: tokio::time::Instant,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(Imap, Wake), ServerError> {
        let Imap {
            session,
            budget,
            server,
            renew_at,
            caps,
        } = self;
        // One budget for the whole wait: a server may report news, not stream forever.
        budget.set(COMMAND_BUDGET);
        let mut handle = session.idle();
        timed(COMMAND_TIMEOUT, &server, "IDLE", handle.init()).await?;
        let lost = |why: &str| {
            ServerError::transient(&server, format!("the connection ended during IDLE ({why})"))
        };
        let wake = {
            // The library's own timeout restarts with every keepalive; the deadline is ours.
            let (wait, _stop) = handle.wait_with_timeout(Duration::from_secs(29 * 60));
            tokio::select! {
                result = wait => match result {
                    Ok(async_imap::extensions::idle::IdleResponse::NewData(_)) => Wake::NewData,
                    Ok(async_imap::extensions::idle::IdleResponse::Timeout) => Wake::Deadline,
                    Ok(async_imap::extensions::idle::IdleResponse::ManualInterrupt) => return Err(lost("closed by the server")),
                    Err(e) => return Err(lost(&e.to_string())),
                },
                () = tokio::time::sleep_until(deadline) => Wake::Deadline,
                _ = shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
            }
        };
        let session = timed(COMMAND_TIMEOUT, &server, "DONE", handle.done()).await?;
        let mut imap = Imap {
            session,
            budget,
            server,
            renew_at,
            caps,
        };
        imap.drain();
        Ok((imap, wake))
    }

    /// Asks the server for news without IDLE (for servers that lack it).
    ///
    /// # Errors
    /// The connection dropped.
    pub async fn noop(&mut self) -> Result<(), ServerError> {
        self.budget.set(COMMAND_BUDGET);
        let server = self.server.clone();
        timed(COMMAND_TIMEOUT, &server, "NOOP", self.session.noop()).await?;
        self.drain();
        Ok(())
    }

    /// Logs out; errors are ignored (the work is done).
    pub async fn logout(mut self) {
        self.budget.set(COMMAND_BUDGET);
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.session.logout()).await;
    }

    /// Discards queued unsolicited responses (async-imap drops them past 100 anyway); after
    /// [`Bodies::finish`], before the next command.
    pub fn drain(&mut self) {
        while self.session.unsolicited_responses.try_recv().is_ok() {}
    }
}

/// Connects, secures, reads the greeting and authenticates once.
async fn login(
    account: &Account,
    server: &Server,
    token: &Secret,
) -> Result<(async_imap::Session<Budgeted>, Budget), LoginFailure> {
    let name = server.address();
    let other = LoginFailure::Other;
    let tcp = net::connect(server).await.map_err(other)?;
    let stream = match server.tls {
        Tls::Implicit => net::tls(tcp, server, "connecting").await.map_err(other)?,
        Tls::Starttls | Tls::None => Stream::Plain(tcp),
    };
    // The whole login (greeting, STARTTLS, AUTHENTICATE) shares one ordinary budget.
    let budget = Budget::default();
    budget.set(COMMAND_BUDGET);
    let mut client = async_imap::Client::new(Budgeted::new(stream, budget.clone()));
    greeting(&mut client, &name).await.map_err(other)?;
    if server.tls == Tls::Starttls {
        timed(
            COMMAND_TIMEOUT,
            &name,
            "STARTTLS",
            client.run_command_and_check_ok("STARTTLS", None),
        )
        .await
        .map_err(other)?;
        let Stream::Plain(tcp) = client.into_inner().inner else {
            return Err(other(ServerError::failed(
                name,
                "internal: STARTTLS on an encrypted stream",
            )));
        };
        let tls = net::tls(tcp, server, "STARTTLS").await.map_err(other)?;
        client = async_imap::Client::new(Budgeted::new(tls, budget.clone()));
    }
    let session = authenticate(client, account, server, &name, token).await?;
    Ok((session, budget))
}

async fn greeting(
    client: &mut async_imap::Client<Budgeted>,
    name: &str,
) -> Result<(), ServerError> {
    match tokio::time::timeout(net::CONNECT_TIMEOUT, client.read_response()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(ServerError::transient(
            name,
            "the server closed the connection before its greeting",
        )),
        Ok(Err(e)) => {
            Err(ServerError::transient(name, "reading the greeting failed").with_source(e))
        }
        Err(_) => Err(ServerError::transient(name, "no greeting from the server")),
    }
}

async fn authenticate(
    client: async_imap::Client<Budgeted>,
    account: &Account,
    server: &Server,
    name: &str,
    token: &Secret,
) -> Result<async_imap::Session<Budgeted>, LoginFailure> {
    let challenge = Arc::new(Mutex::new(None));
    let auth = OAuthAuthenticator {
        initial: Some(sasl::initial_response_raw(
            server.mechanism,
            &account.email,
            (&server.host, server.port),
            token,
        )),
        cancel: sasl::cancel_reply_raw(server.mechanism),
        challenge: challenge.clone(),
    };
    let mech = server.mechanism.sasl_name();
    tracing::trace!(server = %name, "AUTHENTICATE {mech} [redacted]");
    let result = match tokio::time::timeout(COMMAND_TIMEOUT, client.authenticate(mech, auth)).await
    {
        Ok(r) => r,
        Err(_) => {
            return Err(LoginFailure::Other(ServerError::transient(
                name,
                "AUTHENTICATE timed out",
            )))
        }
    };
    let error = match result {
        Ok(session) => return Ok(session),
        Err((error, _client)) => error,
    };
    let decoded = challenge
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .map(|c| Rejection::parse(&c));
    match error {
        async_imap::error::Error::No(text) if text.contains("[UNAVAILABLE]") => {
            Err(LoginFailure::Other(ServerError::transient(
                name,
                format!(
                    "the server could not check the token now: {}",
                    clean(&text, SERVER_TEXT_MAX)
                ),
            )))
        }
        async_imap::error::Error::No(text) => Err(LoginFailure::Rejected {
            challenge: decoded,
            reply: clean(&text, SERVER_TEXT_MAX),
        }),
        other => Err(LoginFailure::Other(classify(
            name,
            "AUTHENTICATE",
            Box::new(other),
        ))),
    }
}

/// `uids` (ascending) as a compact UID set: `1:3,7,9:10`.
fn uid_set(uids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.saturating_add(1) {
            i += 1;
            end = uids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UID sets are compact ranges.
    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    /// Flags are atoms (system flags with a backslash); criteria have no control characters.
    #[test]
    fn flags_and_criteria() {
        for ok in ["\\Seen", "\\Flagged", "processed", "$Label1", "a.b-c_d"] {
            assert_eq!(check_flag(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "\\",
            "a b",
            "x\r\nA1 DELETE INBOX",
            "(x)",
            "a*",
            "q\"",
            "\u{e9}",
        ] {
            assert!(check_flag(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_search("FROM \"alerts@example.com\" UNSEEN"), Ok(()));
        assert!(check_search("ALL\r\nA1 DELETE INBOX").is_err());
        assert!(check_search("ALL\0").is_err());
    }

    proptest::proptest! {
        /// A flag or criteria that passes the checks cannot end the command line.
        #[test]
        fn checked_values_stay_on_one_line(text in ".*") {
            if check_flag(&text).is_ok() || check_search(&text).is_ok() {
                proptest::prop_assert!(!text.contains(['\r', '\n', '\0']));
            }
        }

        /// A UID set names exactly the UIDs given.
        #[test]
        fn uid_sets_round_trip(mut uids in proptest::collection::vec(1u32..500, 0..60)) {
            uids.sort_unstable();
            uids.dedup();
            let mut back = Vec::new();
            for part in uid_set(&uids).split(',').filter(|p| !p.is_empty()) {
                match part.split_once(':') {
                    Some((a, b)) => back.extend(a.parse::<u32>().expect("n")..=b.parse::<u32>().expect("n")),
                    None => back.push(part.parse::<u32>().expect("n")),
                }
            }
            proptest::prop_assert_eq!(back, uids);
        }
    }
}

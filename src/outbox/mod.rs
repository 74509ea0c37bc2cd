//! The durable outbox: the one place where a message waits (`sendmail`, the relay and `send
//! --queue` put into it; the daemon and `queue flush` drain it). A message is accepted only once it
//! is stored durably, and leaves only after the server's 250 (or, refused for good, into the failed
//! messages). Two backends behind one type: [`FileOutbox`] (`outbox/` in the state directory, one
//! host) and [`PgOutbox`] (the state database; any number of deliverers on any number of hosts,
//! each message claimed by one).
//!
//! A crash between the server's 250 and the removal of the message sends that one message again,
//! with the same Message-ID.

pub(crate) mod files;
mod maildrop;
mod pg;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Account;
use crate::error::{error_text, ServerError};
use crate::oauth::{TokenSource, TokenStore};
use crate::smtp::Session;

/// The largest message the outbox takes.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;
/// First wait after a failed attempt; doubles each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: u64 = 60;
/// Longest wait between attempts.
const MAX_BACKOFF: u64 = 3600;

pub use files::FileOutbox;
pub use maildrop::{MailDrop, PickedUp};
pub use pg::PgOutbox;

/// Who a queued message goes to, through which account (the first line of `ID.mail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Format version (1).
    pub version: u32,
    /// The account that sends it.
    pub account: String,
    /// The message's From address.
    #[serde(default)]
    pub from: String,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// When it was queued (unix seconds).
    pub queued_at: u64,
}

/// How delivering a message went so far (`ID.state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, as text.
    pub last_error: Option<String>,
    /// Not before this (unix seconds).
    pub next_try: u64,
    /// When `queue retry` queued it again: `max_age` counts from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at: Option<u64>,
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting to be delivered.
    Queued,
    /// Refused for good; `queue retry ID` queues it again.
    Failed,
}

impl Status {
    /// The word for it (`queue list --json`, the database's `status` column).
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Failed => "failed",
        }
    }

    /// The status named `word`, if it is one.
    pub fn from_name(word: &str) -> Option<Status> {
        [Status::Queued, Status::Failed]
            .into_iter()
            .find(|s| s.name() == word)
    }
}

/// A message in the outbox, as `queue list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    /// Its id.
    pub id: String,
    /// Queued or failed.
    pub status: Status,
    /// Account and recipients.
    #[serde(flatten)]
    pub head: Head,
    /// The message's size in bytes.
    pub size: u64,
    /// Attempts so far.
    #[serde(flatten)]
    pub attempts: Attempts,
}

/// What one delivery run did.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Accepted by the server and removed.
    pub sent: Vec<String>,
    /// Refused for good and moved to `failed/` (id, reason).
    pub failed: Vec<(String, String)>,
    /// Still queued (id, reason).
    pub deferred: Vec<(String, String)>,
    /// The error that stopped the run for this account (login refused, server unreachable).
    pub stopped: Option<anyhow::Error>,
}

/// Which of the given messages one delivery run takes.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Now (unix seconds).
    pub now: u64,
    /// Also messages whose next try is later (`queue flush`, `sendmail` itself).
    pub force: bool,
    /// Messages queued longer than this (seconds) move to `failed/`.
    pub max_age: u64,
}

/// The SMTP envelope of a queued message: from the account's mailbox to its recipients.
fn envelope(account: &Account, head: &Head) -> Result<lettre::address::Envelope> {
    let to = head
        .to
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lettre::address::Envelope::new(
        Some(account.email.parse()?),
        to,
    )?)
}

/// How long an idle SMTP session is kept for the next drain: a stream of messages (the relay's)
/// goes over one session, and nothing stays open long after it.
const SESSION_KEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// A kept session idle longer than this is checked with NOOP before it carries a message; within
/// a stream (the relay wakes the drain for every message) that round trip is not paid each time.
const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Open SMTP sessions kept from one delivery run to the next, one per account. A kept session idle
/// for more than [`PROBE_AFTER`] is checked with NOOP before it carries a message, and none is used
/// past its token's renewal time.
#[derive(Default)]
pub struct Sessions(BTreeMap<String, (Session, std::time::Instant)>);

impl Sessions {
    /// The account's kept session, if it is still fresh (and answers NOOP after a pause).
    async fn take(&mut self, account: &str, now: u64) -> Option<Session> {
        let (mut session, idle_since) = self.0.remove(account)?;
        let idle = idle_since.elapsed();
        if idle > SESSION_KEEP || session.token_expiring(now) {
            session.quit().await;
            return None;
        }
        if idle > PROBE_AFTER && session.noop().await.is_err() {
            return None;
        }
        Some(session)
    }

    fn keep(&mut self, account: &str, session: Session) {
        if session.is_usable() {
            self.0
                .insert(account.to_string(), (session, std::time::Instant::now()));
        }
    }

    /// Ends the sessions idle longer than [`SESSION_KEEP`].
    pub async fn close_idle(&mut self) {
        let stale: Vec<String> = self
            .0
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > SESSION_KEEP)
            .map(|(k, _)| k.clone())
            .collect();
        for account in stale {
            if let Some((s, _)) = self.0.remove(&account) {
                s.quit().await;
            }
        }
    }

    /// Ends every session (QUIT).
    pub async fn close(self) {
        for (_, (s, _)) in self.0 {
            s.quit().await;
        }
    }
}

/// The outbox of the configured backend.
#[derive(Debug, Clone)]
pub enum Outbox {
    /// `outbox/` in the state directory.
    Files(FileOutbox),
    /// The `outbox` table of the state database.
    Postgres(PgOutbox),
}

/// Whatever a deliverer needs to claim messages one after another: nothing for files (each
/// message has its lock file), a session of its own for the database.
enum Claimer {
    Files,
    Postgres(crate::db::Session),
}

/// A message claimed for delivery: no one else delivers it until it is settled (or the claim
/// dropped, or the process dies).
enum Claimed {
    Files(files::EntryLock),
    Postgres(pg::Claim),
}

/// A claimed message: its id, the claim, its head, text and attempts so far.
pub(super) struct Taken<C> {
    id: String,
    claim: C,
    head: Head,
    message: Vec<u8>,
    state: Attempts,
}

impl<C> Taken<C> {
    fn map<D>(self, f: impl FnOnce(C) -> D) -> Taken<D> {
        Taken {
            id: self.id,
            claim: f(self.claim),
            head: self.head,
            message: self.message,
            state: self.state,
        }
    }
}

/// Where a delivery run is in its messages.
enum Cursor<'a> {
    /// The given ids, one after another.
    Listed(std::slice::Iter<'a, String>),
    /// The database's due messages of the account, oldest first, after this id.
    After(String),
}

/// How a claimed message's delivery ended.
enum Settled<'a> {
    Sent,
    Deferred(Attempts, &'a str, u64),
    Failed(&'a Attempts, &'a str),
}

impl Outbox {
    /// The outbox of `home`: `outbox/` in the state directory, or the database's table.
    pub fn at(home: &crate::db::StateHome) -> Outbox {
        match home {
            crate::db::StateHome::Files(dir) => Outbox::files(dir),
            crate::db::StateHome::Postgres(db) => Outbox::Postgres(PgOutbox::new(db.clone())),
        }
    }

    /// The file outbox under `state_dir`.
    pub fn files(state_dir: &Path) -> Outbox {
        Outbox::Files(FileOutbox::new(state_dir))
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Outbox::Files(f) => f.dir().display().to_string(),
            Outbox::Postgres(p) => p.describe(),
        }
    }

    /// Puts a message in the outbox; when this returns, it is stored durably (a file write with
    /// its fsyncs runs off the async threads).
    ///
    /// # Errors
    /// The outbox cannot be written.
    pub async fn put(&self, head: Head, message: Vec<u8>) -> Result<String> {
        match self {
            Outbox::Files(f) => {
                let files = f.clone();
                tokio::task::spawn_blocking(move || files.put(&head, &message))
                    .await
                    .map_err(|e| anyhow::anyhow!("the outbox writer stopped: {e}"))?
            }
            Outbox::Postgres(p) => p.put(&head, &message, None).await,
        }
    }

    /// Keeps a message that cannot be sent as it is (no recipient, a local name without an alias)
    /// with the failed ones, with `reason`, so nothing handed over is lost.
    ///
    /// # Errors
    /// The outbox cannot be written.
    pub async fn put_failed(&self, head: &Head, message: &[u8], reason: &str) -> Result<String> {
        match self {
            Outbox::Files(f) => f.put_failed(head, message, reason),
            Outbox::Postgres(p) => p.put(head, message, Some(reason)).await,
        }
    }

    /// Stores `entry` (from another outbox) with its id, status and attempts; `false` when a
    /// message with that id is already here.
    ///
    /// # Errors
    /// The outbox cannot be written.
    pub async fn put_as(&self, entry: &Queued, message: &[u8]) -> Result<bool> {
        match self {
            Outbox::Files(f) => f.put_as(entry, message),
            Outbox::Postgres(p) => p.put_as(entry, message).await,
        }
    }

    /// Every message, queued first then failed, oldest first.
    ///
    /// # Errors
    /// The outbox cannot be read.
    pub async fn list(&self) -> Result<Vec<Queued>> {
        match self {
            Outbox::Files(f) => f.list(),
            Outbox::Postgres(p) => p.list().await,
        }
    }

    /// The message `id` (queued or failed) with its head.
    ///
    /// # Errors
    /// No such message, or it cannot be read.
    pub async fn load(&self, id: &str) -> Result<(Head, Vec<u8>)> {
        match self {
            Outbox::Files(f) => f.load(id),
            Outbox::Postgres(p) => p.load(id).await,
        }
    }

    /// Queues the failed message `id` again (attempts start over).
    ///
    /// # Errors
    /// It is not a failed message, or the outbox cannot be written.
    pub async fn retry(&self, id: &str, now: u64) -> Result<()> {
        match self {
            Outbox::Files(f) => f.retry(id, now),
            Outbox::Postgres(p) => p.retry(id, now).await,
        }
    }

    /// Deletes message `id`, queued or failed.
    ///
    /// # Errors
    /// No such message, or it is being delivered right now.
    pub async fn drop_message(&self, id: &str) -> Result<()> {
        match self {
            Outbox::Files(f) => f.drop_message(id),
            Outbox::Postgres(p) => p.drop_message(id).await,
        }
    }

    /// The queued messages due now (all of them with `drain.force`), by account, oldest first.
    ///
    /// # Errors
    /// The outbox cannot be read.
    pub async fn due_by_account(&self, drain: Drain) -> Result<BTreeMap<String, Vec<String>>> {
        match self {
            Outbox::Files(f) => f.due_by_account(drain),
            Outbox::Postgres(p) => p.due_by_account(drain).await,
        }
    }

    async fn claimer(&self) -> Result<Claimer> {
        Ok(match self {
            Outbox::Files(_) => Claimer::Files,
            Outbox::Postgres(p) => Claimer::Postgres(p.claimer().await?),
        })
    }

    /// The next message of the run, claimed; `None` when there is none left.
    async fn next(
        &self,
        claimer: &Claimer,
        cursor: &mut Cursor<'_>,
        account: &Account,
        drain: &Drain,
    ) -> Result<Option<Taken<Claimed>>> {
        loop {
            let taken = match (self, claimer, &mut *cursor) {
                (Outbox::Postgres(p), Claimer::Postgres(session), Cursor::After(after)) => {
                    match p.claim_next(session, after, account, drain).await? {
                        pg::Next::Taken(t) => Some(t.map(Claimed::Postgres)),
                        pg::Next::Passed(id) => {
                            *after = id;
                            continue;
                        }
                        pg::Next::End => return Ok(None),
                    }
                }
                (_, _, Cursor::Listed(ids)) => {
                    let Some(id) = ids.next() else {
                        return Ok(None);
                    };
                    match (self, claimer) {
                        (Outbox::Postgres(p), Claimer::Postgres(session)) => p
                            .claim(session, id, account, drain)
                            .await?
                            .map(|t| t.map(Claimed::Postgres)),
                        (Outbox::Files(f), _) => {
                            f.claim(id, account, drain)?.map(|t| t.map(Claimed::Files))
                        }
                        (Outbox::Postgres(_), Claimer::Files) => None,
                    }
                }
                _ => return Ok(None),
            };
            if let Some(taken) = taken {
                if let Cursor::After(after) = cursor {
                    after.clone_from(&taken.id);
                }
                return Ok(Some(taken));
            }
        }
    }

    async fn settle(
        &self,
        claimer: &Claimer,
        id: &str,
        claimed: Claimed,
        how: Settled<'_>,
    ) -> Result<()> {
        match (self, claimer, claimed) {
            (Outbox::Postgres(p), Claimer::Postgres(session), Claimed::Postgres(claim)) => {
                match how {
                    Settled::Sent => p.sent(session, claim).await,
                    Settled::Deferred(state, reason, now) => {
                        p.defer(session, claim, state, reason, now).await
                    }
                    Settled::Failed(state, reason) => p.fail(session, claim, state, reason).await,
                }
            }
            (Outbox::Files(f), _, Claimed::Files(_lock)) => match how {
                Settled::Sent => f.sent(id),
                Settled::Deferred(state, reason, now) => f.defer(id, state, reason, now),
                Settled::Failed(state, reason) => f.fail(id, state, reason),
            },
            _ => anyhow::bail!("internal: an outbox claim settled on another backend"),
        }
    }

    /// Delivers the queued messages `ids` of `account` that are due (all of them with
    /// `drain.force`), over one session; a message another deliverer holds is passed by. With the
    /// database and several ids, each step claims the account's next due message that no one
    /// holds (`SKIP LOCKED`), so deliverers on several hosts split the queue between them. Each
    /// leaves the outbox only after the server's 250; a permanent refusal (or an unusable message,
    /// or one older than `max_age`) moves it to the failed ones; anything else leaves it queued
    /// with its error and the time of the next try. When the session cannot be opened, every due
    /// message of the account is deferred with that reason (no retry storm).
    ///
    /// # Errors
    /// The outbox cannot be read or written (delivery problems are in [`Delivered`]).
    pub async fn deliver<S: TokenStore>(
        &self,
        account: &Account,
        tokens: &TokenSource<'_, S>,
        ids: &[String],
        drain: Drain,
        sessions: &mut Sessions,
    ) -> Result<Delivered> {
        let mut done = Delivered::default();
        if ids.is_empty() {
            return Ok(done);
        }
        let claimer = self.claimer().await?;
        // The database hands several deliverers the next free message each; a single message (a
        // `sendmail` delivering its own) is claimed as such.
        let mut cursor = match self {
            Outbox::Postgres(_) if ids.len() > 1 => Cursor::After(String::new()),
            _ => Cursor::Listed(ids.iter()),
        };
        let mut session: Option<Session> = sessions.take(&account.name, drain.now).await;
        while let Some(taken) = self.next(&claimer, &mut cursor, account, &drain).await? {
            let verdict = attempt(account, tokens, &mut session, &taken, &mut done.stopped).await;
            let Taken {
                id, claim, state, ..
            } = taken;
            match verdict {
                Verdict::Sent => {
                    self.settle(&claimer, &id, claim, Settled::Sent).await?;
                    done.sent.push(id);
                }
                Verdict::Deferred(reason) => {
                    let how = Settled::Deferred(state, &reason, drain.now);
                    self.settle(&claimer, &id, claim, how).await?;
                    done.deferred.push((id, reason));
                }
                Verdict::Failed(reason) => {
                    let how = Settled::Failed(&state, &reason);
                    self.settle(&claimer, &id, claim, how).await?;
                    done.failed.push((id, reason));
                }
            }
        }
        if let Some(s) = session {
            sessions.keep(&account.name, s);
        }
        Ok(done)
    }
}

/// What became of one claimed message.
enum Verdict {
    /// The server took it.
    Sent,
    /// Not now: the reason.
    Deferred(String),
    /// Never: the reason.
    Failed(String),
}

/// Sends one claimed message over `session` (opened on first need, dropped when it breaks).
/// Once the session cannot be opened, `stopped` holds why, and every later message of the run is
/// deferred with that reason (no retry storm).
async fn attempt<S: TokenStore, C>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    session: &mut Option<Session>,
    taken: &Taken<C>,
    stopped: &mut Option<anyhow::Error>,
) -> Verdict {
    if let Some(e) = stopped {
        return Verdict::Deferred(error_text(e.as_ref()));
    }
    let Ok(envelope) = envelope(account, &taken.head) else {
        return Verdict::Failed("a recipient address is unusable".into());
    };
    if session.is_none() {
        match Session::open(account, tokens).await {
            Ok(s) => *session = Some(s),
            Err(e) => {
                let reason = error_text(e.as_ref());
                *stopped = Some(e);
                return Verdict::Deferred(reason);
            }
        }
    }
    let Some(s) = session.as_mut() else {
        return Verdict::Deferred("no SMTP session".into());
    };
    match s.send(&envelope, &taken.message).await {
        Ok(_) => Verdict::Sent,
        Err(e @ ServerError::Failed { .. }) => {
            if !s.is_usable() {
                *session = None;
            }
            Verdict::Failed(error_text(&e))
        }
        Err(e) => {
            *session = None;
            Verdict::Deferred(error_text(&e))
        }
    }
}

/// Why a message queued too long is refused for good (`None`: it may still be tried).
fn expired(head: &Head, state: &Attempts, drain: &Drain) -> Option<String> {
    let since = state
        .retried_at
        .unwrap_or(head.queued_at)
        .max(head.queued_at);
    if drain.now.saturating_sub(since) <= drain.max_age {
        return None;
    }
    let last = state.last_error.clone().unwrap_or_else(|| "none".into());
    Some(format!(
        "not delivered within {} (last error: {last})",
        humantime::format_duration(std::time::Duration::from_secs(drain.max_age))
    ))
}

/// `state` after a failed attempt at `now`: the next one waits 1, 2, 4… minutes (at most an
/// hour).
fn deferred(mut state: Attempts, reason: &str, now: u64) -> Attempts {
    state.attempts += 1;
    state.last_error = Some(reason.to_string());
    let wait = FIRST_BACKOFF
        .saturating_mul(1 << (state.attempts - 1).min(10))
        .min(MAX_BACKOFF);
    state.next_try = now + wait;
    state
}

/// The record of a message refused for good.
fn failed(state: &Attempts, reason: &str) -> Attempts {
    Attempts {
        attempts: state.attempts + 1,
        last_error: Some(reason.to_string()),
        next_try: 0,
        retried_at: None,
    }
}

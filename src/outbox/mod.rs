//! The durable outbox, `$XDG_STATE_HOME/mailpilot/outbox/`: the one place where a message waits
//! (for `sendmail` today; the relay and the daemon use the same). A message is accepted only once it
//! is on disk, and leaves only after the server's 250 (or, refused for good, into `failed/`).
//!
//! - `ID.mail`: one JSON line (account, recipients, when queued), then the message as given. It
//!   appears whole or not at all (`fsutil::write_atomic`: temp file, fsync, rename, fsync dir).
//! - `ID.state.json`: attempts, the last error and when to try next (absent before the first try).
//! - `failed/ID.mail` and `failed/ID.reason.json`: refused permanently, with the server's reply.
//! - `locks/ID.lock`: whoever holds it is delivering that message; the others pass it by.
//!
//! A crash between the server's 250 and the removal of `ID.mail` sends that one message again, with
//! the same Message-ID.

mod maildrop;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Account;
use crate::error::{error_text, ServerError};
use crate::fsutil;
use crate::oauth::{TokenSource, TokenStore};
use crate::smtp::Session;

/// The largest message the outbox takes.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;
/// First wait after a failed attempt; doubles each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: u64 = 60;
/// Longest wait between attempts.
const MAX_BACKOFF: u64 = 3600;

pub use maildrop::{MailDrop, PickedUp};

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

/// A message's delivery lock, held while it is delivered; its file is removed once the message has
/// left the outbox (sent or failed), so `locks/` does not grow with every message ever queued.
struct EntryLock {
    _file: fs::File,
    lock: PathBuf,
    mail: PathBuf,
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        // Still locked here (the file closes after this): a process that opened the old file
        // finds the message gone and passes it by.
        if !self.mail.exists() {
            let _ = fs::remove_file(&self.lock);
        }
    }
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

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The outbox under `state_dir`.
    pub fn new(state_dir: &Path) -> Outbox {
        Outbox {
            dir: state_dir.join("outbox"),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn mail(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.mail"))
    }

    fn state(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.state.json"))
    }

    fn failed_mail(&self, id: &str) -> PathBuf {
        self.dir.join("failed").join(format!("{id}.mail"))
    }

    /// Puts a message in the outbox; when this returns, it is on disk.
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn put(&self, head: &Head, message: &[u8]) -> Result<String> {
        fsutil::private_dir(&self.dir)?;
        // Time first, so ids sort oldest first.
        let id = crate::clock::unique_stamp();
        let mut bytes = serde_json::to_vec(head).context("failed to encode the outbox entry")?;
        bytes.push(b'\n');
        bytes.extend_from_slice(message);
        fsutil::write_atomic(&self.mail(&id), &bytes)
            .with_context(|| format!("failed to queue the message in {}", self.dir.display()))?;
        Ok(id)
    }

    /// Keeps a message that cannot be sent as it is (no recipient, a local name without an alias)
    /// in `failed/` with `reason`, so nothing handed over is lost: `queue show ID` gives it back.
    ///
    /// # Errors
    /// As [`Outbox::put`].
    pub fn put_failed(&self, head: &Head, message: &[u8], reason: &str) -> Result<String> {
        let id = self.put(head, message)?;
        self.fail(&id, &Attempts::default(), reason)?;
        Ok(id)
    }

    /// Every message, queued first then failed, oldest first.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn list(&self) -> Result<Vec<Queued>> {
        let mut all = Vec::new();
        for (dir, status) in [
            (self.dir.clone(), Status::Queued),
            (self.dir.join("failed"), Status::Failed),
        ] {
            for id in ids(&dir)? {
                let path = dir.join(format!("{id}.mail"));
                let Ok((head, size)) = read_head(&path) else {
                    continue;
                };
                let state = match status {
                    Status::Queued => self.state(&id),
                    Status::Failed => dir.join(format!("{id}.reason.json")),
                };
                let attempts = fsutil::read_optional(&state)?
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                all.push(Queued {
                    id,
                    status,
                    head,
                    size,
                    attempts,
                });
            }
        }
        Ok(all)
    }

    /// The message `id` (queued or failed) with its head.
    ///
    /// # Errors
    /// No such message, or it cannot be read.
    pub fn load(&self, id: &str) -> Result<(Head, Vec<u8>)> {
        check_id(id)?;
        for path in [self.mail(id), self.failed_mail(id)] {
            if path.exists() {
                return read_mail(&path);
            }
        }
        bail!("no message {id} in {}", self.dir.display())
    }

    /// Queues the failed message `id` again (attempts start over).
    ///
    /// # Errors
    /// It is not in `failed/`, or the move fails.
    pub fn retry(&self, id: &str, now: u64) -> Result<()> {
        check_id(id)?;
        let from = self.failed_mail(id);
        if !from.exists() {
            bail!("no failed message {id} (see `mailpilot queue list`)");
        }
        let fresh = Attempts {
            retried_at: Some(now),
            ..Attempts::default()
        };
        fsutil::write_atomic(&self.state(id), &serde_json::to_vec(&fresh)?)?;
        fs::rename(&from, self.mail(id))
            .with_context(|| format!("failed to move {} back", from.display()))?;
        let _ = fs::remove_file(self.dir.join("failed").join(format!("{id}.reason.json")));
        sync_dir(&self.dir)
    }

    /// Deletes message `id`, queued or failed.
    ///
    /// # Errors
    /// No such message, or it is being delivered right now.
    pub fn drop_message(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let Some(_lock) = fsutil::try_lock(&self.dir.join("locks").join(format!("{id}.lock")))?
        else {
            bail!("message {id} is being delivered right now");
        };
        let mut found = false;
        for path in [
            self.mail(id),
            self.state(id),
            self.failed_mail(id),
            self.dir.join("failed").join(format!("{id}.reason.json")),
        ] {
            found |= fs::remove_file(&path).is_ok();
        }
        if !found {
            bail!("no message {id} in {}", self.dir.display());
        }
        sync_dir(&self.dir)
    }

    /// Delivers the queued messages of `account` that are due (all of them with `drain.force`),
    /// over one session. Each leaves the outbox only after the server's 250; a permanent refusal
    /// (or an unusable message, or one older than `max_age`) moves it to `failed/`; anything else
    /// leaves it queued with its error and the time of the next try. When the session cannot be
    /// opened, every due message of the account is deferred with that reason (no retry storm).
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
        let mut session: Option<Session> = sessions.take(&account.name, drain.now).await;
        for id in ids {
            let id = id.clone();
            let Some(_lock) = self.lock(&id)? else {
                continue;
            };
            let Some((head, message, state)) = self.due(&id, account, &drain)? else {
                continue;
            };
            if let Some(e) = &done.stopped {
                let reason = error_text(e.as_ref());
                self.defer(&id, state, &reason, drain.now)?;
                done.deferred.push((id, reason));
                continue;
            }
            let Ok(envelope) = envelope(account, &head) else {
                let reason = "a recipient address is unusable".to_string();
                self.fail(&id, &state, &reason)?;
                done.failed.push((id, reason));
                continue;
            };
            if session.is_none() {
                match Session::open(account, tokens).await {
                    Ok(s) => session = Some(s),
                    Err(e) => {
                        let reason = error_text(e.as_ref());
                        self.defer(&id, state, &reason, drain.now)?;
                        done.deferred.push((id, reason));
                        done.stopped = Some(e);
                        continue;
                    }
                }
            }
            let Some(s) = session.as_mut() else { break };
            match s.send(&envelope, &message).await {
                Ok(_) => {
                    let path = self.mail(&id);
                    fs::remove_file(&path)
                        .with_context(|| format!("failed to remove {}", path.display()))?;
                    let _ = fs::remove_file(self.state(&id));
                    sync_dir(&self.dir)?;
                    done.sent.push(id);
                }
                Err(e @ ServerError::Failed { .. }) => {
                    let reason = error_text(&e);
                    self.fail(&id, &state, &reason)?;
                    done.failed.push((id, reason));
                    if !s.is_usable() {
                        session = None;
                    }
                }
                Err(e) => {
                    let reason = error_text(&e);
                    self.defer(&id, state, &reason, drain.now)?;
                    done.deferred.push((id, reason));
                    session = None;
                }
            }
        }
        if let Some(s) = session {
            sessions.keep(&account.name, s);
        }
        Ok(done)
    }

    /// The delivery lock of message `id`, unless another process holds it.
    fn lock(&self, id: &str) -> Result<Option<EntryLock>> {
        let lock = self.dir.join("locks").join(format!("{id}.lock"));
        Ok(fsutil::try_lock(&lock)?.map(|file| EntryLock {
            _file: file,
            lock,
            mail: self.mail(id),
        }))
    }

    /// Message `id` if it is `account`'s and due now: its head, text and attempts. A message that
    /// cannot be read, or is older than `max_age`, is moved to `failed/` instead.
    fn due(
        &self,
        id: &str,
        account: &Account,
        drain: &Drain,
    ) -> Result<Option<(Head, Vec<u8>, Attempts)>> {
        let path = self.mail(id);
        if !path.exists() {
            return Ok(None);
        }
        let state: Attempts = fsutil::read_optional(&self.state(id))?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if !drain.force && state.next_try > drain.now {
            return Ok(None);
        }
        // The head line first: the daemon looks every second, the message is read only to send.
        match read_head(&path) {
            Ok((head, _)) if head.account != account.name => return Ok(None),
            _ => {}
        }
        let (head, message) = match read_mail(&path) {
            Ok(m) => m,
            Err(e) => {
                self.fail(
                    id,
                    &state,
                    &format!("unreadable: {}", error_text(e.as_ref())),
                )?;
                return Ok(None);
            }
        };
        let since = state
            .retried_at
            .unwrap_or(head.queued_at)
            .max(head.queued_at);
        if drain.now.saturating_sub(since) > drain.max_age {
            let last = state.last_error.clone().unwrap_or_else(|| "none".into());
            let reason = format!(
                "not delivered within {} (last error: {last})",
                humantime::format_duration(std::time::Duration::from_secs(drain.max_age))
            );
            self.fail(id, &state, &reason)?;
            return Ok(None);
        }
        Ok(Some((head, message, state)))
    }

    /// Records a failed attempt; the next one waits 1, 2, 4… minutes (at most an hour).
    fn defer(&self, id: &str, mut state: Attempts, reason: &str, now: u64) -> Result<()> {
        state.attempts += 1;
        state.last_error = Some(reason.to_string());
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << (state.attempts - 1).min(10))
            .min(MAX_BACKOFF);
        state.next_try = now + wait;
        fsutil::write_atomic(&self.state(id), &serde_json::to_vec(&state)?)
    }

    /// Moves a refused message to `failed/` with the reason.
    fn fail(&self, id: &str, state: &Attempts, reason: &str) -> Result<()> {
        let failed = self.dir.join("failed");
        fsutil::private_dir(&failed)?;
        let record = Attempts {
            attempts: state.attempts + 1,
            last_error: Some(reason.to_string()),
            next_try: 0,
            retried_at: None,
        };
        fsutil::write_atomic(
            &failed.join(format!("{id}.reason.json")),
            &serde_json::to_vec(&record)?,
        )?;
        fs::rename(self.mail(id), self.failed_mail(id))
            .with_context(|| format!("failed to move message {id} to {}", failed.display()))?;
        let _ = fs::remove_file(self.state(id));
        sync_dir(&self.dir)?;
        sync_dir(&failed)
    }
}

/// The ids of the `*.mail` files in `dir`, oldest first.
fn ids(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", dir.display())),
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".mail").map(str::to_string)
        })
        .filter(|id| check_id(id).is_ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Ids are digits and dashes: nothing else reaches a path.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        bail!(
            "\"{}\" is not a message id (see `mailpilot queue list`)",
            crate::error::clean(id, 80)
        );
    }
    Ok(())
}

fn read_mail(path: &Path) -> Result<(Head, Vec<u8>)> {
    let bytes = fsutil::read_limited(path, MAX_MESSAGE_BYTES + 64 * 1024)?;
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .with_context(|| format!("{} has no head line", path.display()))?;
    let head: Head = serde_json::from_slice(&bytes[..newline])
        .with_context(|| format!("{} has an unreadable head line", path.display()))?;
    Ok((head, bytes[newline + 1..].to_vec()))
}

/// The head and the message size, reading only the first line.
fn read_head(path: &Path) -> Result<(Head, u64)> {
    use std::io::{BufRead, Read};
    let file = fs::File::open(path)?;
    let total = file.metadata()?.len();
    let mut line = Vec::new();
    std::io::BufReader::new(file)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)?;
    let head: Head = serde_json::from_slice(line.trim_ascii_end())?;
    Ok((head, total.saturating_sub(line.len() as u64)))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("failed to fsync directory {}", dir.display()))
}

impl Outbox {
    /// The queued messages due now (all of them with `drain.force`), by account, oldest first:
    /// one listing for a whole drain, each message then re-read under its lock.
    ///
    /// # Errors
    /// The outbox cannot be read.
    pub fn due_by_account(&self, drain: Drain) -> Result<BTreeMap<String, Vec<String>>> {
        let mut due: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for q in self.list()? {
            if q.status == Status::Queued && (drain.force || q.attempts.next_try <= drain.now) {
                due.entry(q.head.account).or_default().push(q.id);
            }
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            version: 1,
            account: "work".into(),
            from: "ops@example.com".into(),
            to: vec!["a@example.com".into()],
            queued_at: 100,
        }
    }

    /// Two puts in a row get two ids; list shows them oldest first with their
    /// sizes; drop removes one; ids that could name a path are refused.
    #[test]
    fn put_list_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::new(dir.path());
        let a = outbox
            .put(&head(), b"Subject: a\r\n\r\nx\r\n")
            .expect("put");
        let b = outbox
            .put(&head(), b"Subject: b\r\n\r\nyy\r\n")
            .expect("put");
        assert_ne!(a, b);
        let listed = outbox.list().expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|q| (q.id.as_str(), q.size))
                .collect::<Vec<_>>(),
            [(a.as_str(), 17), (b.as_str(), 18)]
        );
        assert_eq!(
            outbox.load(&b).expect("load").1,
            b"Subject: b\r\n\r\nyy\r\n"
        );
        outbox.drop_message(&a).expect("drop");
        assert_eq!(outbox.list().expect("list").len(), 1);
        for bad in ["../x", "", "a.mail", "1/2"] {
            assert!(outbox.load(bad).is_err(), "{bad:?}");
            assert!(outbox.drop_message(bad).is_err(), "{bad:?}");
        }
        assert!(
            outbox.retry(&b, 200).is_err(),
            "only failed messages are retried"
        );
    }
}

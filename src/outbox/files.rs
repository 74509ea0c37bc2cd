//! The outbox in files, `$XDG_STATE_HOME/mailpilot/outbox/` (`[state] backend = "files"`).
//!
//! - `ID.mail`: one JSON line (account, recipients, when queued), then the message as given. It
//!   appears whole or not at all (`fsutil::write_atomic`: temp file, fsync, rename, fsync dir).
//! - `ID.state.json`: attempts, the last error and when to try next (absent before the first try).
//! - `failed/ID.mail` and `failed/ID.reason.json`: refused permanently, with the server's reply.
//! - `locks/ID.lock`: whoever holds it is delivering that message; the others pass it by.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Attempts, Drain, Head, Queued, Status, MAX_MESSAGE_BYTES};
use crate::config::Account;
use crate::error::error_text;
use crate::fsutil;

/// A message's delivery lock, held while it is delivered; its file is removed once the message has
/// left the outbox (sent or failed), so `locks/` does not grow with every message ever queued.
pub(super) struct EntryLock {
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

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct FileOutbox {
    dir: PathBuf,
}

impl FileOutbox {
    /// The outbox under `state_dir`.
    pub fn new(state_dir: &Path) -> FileOutbox {
        FileOutbox {
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

    /// Stores `entry` (from another outbox) under its id; `false` when that id is already here.
    ///
    /// # Errors
    /// The id is not one, or the files cannot be written.
    pub fn put_as(&self, entry: &Queued, message: &[u8]) -> Result<bool> {
        check_id(&entry.id)?;
        let id = &entry.id;
        if self.mail(id).exists() || self.failed_mail(id).exists() {
            return Ok(false);
        }
        fsutil::private_dir(&self.dir)?;
        let mut bytes =
            serde_json::to_vec(&entry.head).context("failed to encode the outbox entry")?;
        bytes.push(b'\n');
        bytes.extend_from_slice(message);
        match entry.status {
            Status::Queued => {
                if entry.attempts != Attempts::default() {
                    fsutil::write_atomic(&self.state(id), &serde_json::to_vec(&entry.attempts)?)?;
                }
                fsutil::write_atomic(&self.mail(id), &bytes)?;
            }
            Status::Failed => {
                let failed = self.dir.join("failed");
                fsutil::private_dir(&failed)?;
                fsutil::write_atomic(
                    &failed.join(format!("{id}.reason.json")),
                    &serde_json::to_vec(&entry.attempts)?,
                )?;
                fsutil::write_atomic(&self.failed_mail(id), &bytes)?;
            }
        }
        Ok(true)
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

    /// Message `id`, locked for delivery, if it is `account`'s, due now, and no other process is
    /// delivering it.
    ///
    /// # Errors
    /// The outbox cannot be read or written.
    pub(super) fn claim(
        &self,
        id: &str,
        account: &Account,
        drain: &Drain,
    ) -> Result<Option<super::Taken<EntryLock>>> {
        let Some(lock) = self.lock(id)? else {
            return Ok(None);
        };
        Ok(self
            .due(id, account, drain)?
            .map(|(head, message, state)| super::Taken {
                id: id.to_string(),
                claim: lock,
                head,
                message,
                state,
            }))
    }

    /// Removes message `id`: the server took it.
    pub(super) fn sent(&self, id: &str) -> Result<()> {
        let path = self.mail(id);
        fs::remove_file(&path).with_context(|| format!("failed to remove {}", path.display()))?;
        let _ = fs::remove_file(self.state(id));
        sync_dir(&self.dir)
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
        if let Some(reason) = super::expired(&head, &state, drain) {
            self.fail(id, &state, &reason)?;
            return Ok(None);
        }
        Ok(Some((head, message, state)))
    }

    /// Records a failed attempt; the next one waits 1, 2, 4… minutes (at most an hour).
    pub(super) fn defer(&self, id: &str, state: Attempts, reason: &str, now: u64) -> Result<()> {
        let state = super::deferred(state, reason, now);
        fsutil::write_atomic(&self.state(id), &serde_json::to_vec(&state)?)
    }

    /// Moves a refused message to `failed/` with the reason.
    pub(super) fn fail(&self, id: &str, state: &Attempts, reason: &str) -> Result<()> {
        let failed = self.dir.join("failed");
        fsutil::private_dir(&failed)?;
        let record = super::failed(state, reason);
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
    let mut ids = fsutil::names_with_suffix(dir, ".mail")?;
    ids.retain(|id| check_id(id).is_ok());
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

pub(super) fn read_mail(path: &Path) -> Result<(Head, Vec<u8>)> {
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

impl FileOutbox {
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
        let outbox = FileOutbox::new(dir.path());
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

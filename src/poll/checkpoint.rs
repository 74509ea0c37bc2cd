//! The checkpoint of one account and mailbox (`uidvalidity`, `last_uid`, a first poll's SINCE
//! window, the quarantine) and its lock: `poll/<account>/<mailbox>.json` and `.lock` in the state
//! directory, or a row of the state database's `records` and an advisory lock there (so polls on
//! several hosts take turns and never hand a message over twice). Written after every handled
//! message (atomically, committed); never talks to the mail server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex};

use crate::db::{Db, LockProbe, RecordKind, StateHome};
use crate::error::Busy;

/// How long a second poll of the same mailbox waits for the first before giving up (exit 75).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting poll retries the lock.
const LOCK_POLL: Duration = Duration::from_millis(50);
/// The checkpoint file format.
pub(super) const STATE_VERSION: u32 = 1;

/// The checkpoint of one account and mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The mailbox's UIDVALIDITY when the checkpoint was made.
    pub uidvalidity: u32,
    /// The last message handed over (all below it were handled or passed over on purpose).
    pub last_uid: u32,
    /// While a first `--since` poll has not completed a full pass: its window (IMAP date), so
    /// older messages are never handed over later by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Messages passed over because they cannot be handled, with the reason (UID order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

/// A message that cannot be handled, recorded so that it is reported once and can be retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Quarantined {
    /// Its UID.
    pub uid: u32,
    /// Why it cannot be handled.
    pub reason: String,
    /// When it was quarantined (or last retried), unix seconds.
    pub at: u64,
}

impl Checkpoint {
    /// Records (or updates) `uid` as quarantined for `reason`.
    pub(super) fn quarantine(&mut self, uid: u32, reason: &str, now: u64) {
        self.quarantined.retain(|q| q.uid != uid);
        self.quarantined.push(Quarantined {
            uid,
            reason: reason.to_string(),
            at: now,
        });
        self.quarantined.sort_by_key(|q| q.uid);
    }
}

/// Where one mailbox's checkpoint and lock are.
pub(super) enum Checkpoints {
    /// Files in the state directory.
    Files(StateFiles),
    /// A record in the state database (key `account/mailbox`) and an advisory lock of that name;
    /// `held` tells whether the lock last taken is still held (a restart takes it away).
    Postgres {
        db: Arc<Db>,
        key: String,
        held: Mutex<Option<LockProbe>>,
    },
}

/// A held poll lock of either backend; dropping it releases the lock.
pub(super) enum Held {
    File(#[allow(dead_code, reason = "held for its lock")] std::fs::File),
    Db(crate::db::Lock),
}

impl Held {
    /// Whether the lock was lost (a database lock goes with its session: a server restart, a
    /// broken connection); a file lock is held until dropped.
    pub(super) fn is_lost(&self) -> bool {
        match self {
            Held::File(_) => false,
            Held::Db(lock) => !lock.is_held(),
        }
    }
}

impl Checkpoints {
    /// The checkpoint of `mailbox` of `account` in `home`.
    pub(super) fn new(home: &StateHome, account: &str, mailbox: &str) -> Self {
        match home {
            StateHome::Files(dir) => Checkpoints::Files(StateFiles::new(dir, account, mailbox)),
            StateHome::Postgres(db) => Checkpoints::Postgres {
                db: db.clone(),
                key: format!("{account}/{mailbox}"),
                held: Mutex::new(None),
            },
        }
    }

    /// The saved checkpoint, if any.
    pub(super) async fn load(&self) -> Result<Option<Checkpoint>> {
        match self {
            Checkpoints::Files(files) => files.load(),
            Checkpoints::Postgres { db, key, .. } => db
                .record(RecordKind::Poll, key)
                .await?
                .map(|text| {
                    parse(
                        text.as_bytes(),
                        &format!("poll state {key} in {}", db.target()),
                    )
                })
                .transpose(),
        }
    }

    /// Replaces the checkpoint (durable when this returns).
    ///
    /// # Errors
    /// The write failed; or [`Busy`] after the write when the mailbox lock went with its
    /// database session meanwhile: another host may be polling now, so nothing more is handed
    /// over from here (the next poll, or the watch once it has the lock again, goes on).
    pub(super) async fn save(&self, cp: &Checkpoint) -> Result<()> {
        match self {
            Checkpoints::Files(files) => files.save(cp),
            Checkpoints::Postgres { db, key, held } => {
                let lost = held
                    .lock()
                    .ok()
                    .and_then(|probe| probe.clone())
                    .is_some_and(|probe| !probe.is_held());
                let text = serde_json::to_string(cp).context("failed to encode poll state")?;
                db.put_record(RecordKind::Poll, key, &text).await?;
                if lost {
                    return Err(Busy(format!(
                        "the poll lock of {key} was lost with its database session; the message in hand is recorded"
                    ))
                    .into());
                }
                Ok(())
            }
        }
    }

    /// Takes the mailbox's lock, waiting up to [`LOCK_WAIT`] for another poll.
    pub(super) async fn lock(&self, mailbox: &str) -> Result<Held> {
        let held = match self {
            Checkpoints::Files(files) => files.lock().await?.map(Held::File),
            Checkpoints::Postgres { db, key, held } => {
                let lock = db.lock(&format!("poll {key}"), LOCK_WAIT).await?;
                if let (Some(lock), Ok(mut held)) = (&lock, held.lock()) {
                    *held = Some(lock.probe());
                }
                lock.map(Held::Db)
            }
        };
        held.ok_or_else(|| {
            Busy(format!(
                "another mailpilot process has been polling {mailbox} for over {}s; try again later",
                LOCK_WAIT.as_secs()
            ))
            .into()
        })
    }
}

/// Every stored checkpoint in `home`: `(account, mailbox, json)` (for `state migrate`).
///
/// # Errors
/// The directory or the database cannot be read.
pub async fn all(home: &StateHome) -> Result<Vec<(String, String, String)>> {
    match home {
        StateHome::Postgres(db) => Ok(db
            .records_of(RecordKind::Poll)
            .await?
            .into_iter()
            .filter_map(|(key, json)| {
                let (account, mailbox) = key.split_once('/')?;
                Some((account.to_string(), mailbox.to_string(), json))
            })
            .collect()),
        StateHome::Files(dir) => {
            let mut out = Vec::new();
            let root = dir.join("poll");
            for account in crate::fsutil::names_with_suffix(&root, "")? {
                for file in crate::fsutil::names_with_suffix(&root.join(&account), ".json")? {
                    let Some(mailbox) = decode_name(&file) else {
                        continue;
                    };
                    let path = root.join(&account).join(format!("{file}.json"));
                    let bytes = crate::fsutil::read_limited(&path, 16 * 1024 * 1024)?;
                    let json = String::from_utf8(bytes)
                        .with_context(|| format!("{} is not UTF-8", path.display()))?;
                    out.push((account.clone(), mailbox, json));
                }
            }
            Ok(out)
        }
    }
}

/// The mailbox name of a checkpoint file name (the inverse of [`StateFiles::new`]'s encoding).
fn decode_name(name: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut rest = name.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The stored checkpoint of `mailbox` of `account` as JSON, if any.
///
/// # Errors
/// It cannot be read, or is not a checkpoint.
pub async fn load_json(home: &StateHome, account: &str, mailbox: &str) -> Result<Option<String>> {
    let cp = Checkpoints::new(home, account, mailbox).load().await?;
    cp.map(|cp| serde_json::to_string(&cp).context("failed to encode poll state"))
        .transpose()
}

/// Stores `json` (a checkpoint) as the checkpoint of `mailbox` of `account`.
///
/// # Errors
/// It is not a checkpoint, or it cannot be written.
pub async fn save_json(home: &StateHome, account: &str, mailbox: &str, json: &str) -> Result<()> {
    let cp = parse(
        json.as_bytes(),
        &format!("poll state of {account}/{mailbox}"),
    )?;
    Checkpoints::new(home, account, mailbox).save(&cp).await
}

/// A checkpoint from its JSON; `what` names it in errors.
fn parse(bytes: &[u8], what: &str) -> Result<Checkpoint> {
    let cp: Checkpoint = serde_json::from_slice(bytes).with_context(|| {
        format!("{what} is corrupt; delete it to start over (see --since/--from-now)")
    })?;
    if cp.version != STATE_VERSION {
        bail!(
            "{what} has format version {}, this mailpilot reads {STATE_VERSION}",
            cp.version
        );
    }
    Ok(cp)
}

/// The state files of one account and mailbox: `poll/<account>/<mailbox>.json` and `.lock`.
pub(super) struct StateFiles {
    json: PathBuf,
    lock: PathBuf,
}

impl StateFiles {
    /// The files of `mailbox` of `account` under `state_dir`.
    fn new(state_dir: &Path, account: &str, mailbox: &str) -> Self {
        let dir = state_dir.join("poll").join(account);
        let name: String = mailbox
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Self {
            json: dir.join(format!("{name}.json")),
            lock: dir.join(format!("{name}.lock")),
        }
    }

    /// The saved checkpoint, if any.
    fn load(&self) -> Result<Option<Checkpoint>> {
        let Some(bytes) = crate::fsutil::read_optional(&self.json)? else {
            return Ok(None);
        };
        parse(&bytes, &format!("poll state {}", self.json.display())).map(Some)
    }

    /// Replaces the checkpoint atomically.
    fn save(&self, cp: &Checkpoint) -> Result<()> {
        let mut bytes = serde_json::to_vec(cp).context("failed to encode poll state")?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(&self.json, &bytes)
    }

    /// Takes the mailbox's lock file, waiting up to [`LOCK_WAIT`] for another poll.
    async fn lock(&self) -> Result<Option<std::fs::File>> {
        crate::fsutil::wait_for_lock(
            || crate::fsutil::try_lock(&self.lock),
            Some(LOCK_WAIT),
            LOCK_POLL,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mailbox names become safe file names, and back.
    #[test]
    fn state_file_names() {
        let f = StateFiles::new(Path::new("/s"), "work", "Archive/2026 Q1");
        assert_eq!(
            f.json,
            PathBuf::from("/s/poll/work/Archive%2F2026%20Q1.json")
        );
        assert_eq!(
            decode_name("Archive%2F2026%20Q1").as_deref(),
            Some("Archive/2026 Q1")
        );
        assert_eq!(decode_name("bad%2"), None);
    }
}

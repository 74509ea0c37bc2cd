//! The checkpoint of one account and mailbox (`poll/<account>/<mailbox>.json`: `uidvalidity`,
//! `last_uid`, a first poll's SINCE window) and its lock (`.lock`). Written atomically after every
//! handled message; never talks to the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

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

/// The state files of one account and mailbox: `poll/<account>/<mailbox>.json` and `.lock`.
pub(super) struct StateFiles {
    json: PathBuf,
    lock: PathBuf,
}

impl StateFiles {
    /// The files of `mailbox` of `account` under `state_dir`.
    pub(super) fn new(state_dir: &Path, account: &str, mailbox: &str) -> Self {
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
    pub(super) fn load(&self) -> Result<Option<Checkpoint>> {
        let Some(bytes) = crate::fsutil::read_optional(&self.json)? else {
            return Ok(None);
        };
        let cp: Checkpoint = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "poll state {} is corrupt; delete it to start over (see --since/--from-now)",
                self.json.display()
            )
        })?;
        if cp.version != STATE_VERSION {
            bail!(
                "poll state {} has format version {}, this mailpilot reads {STATE_VERSION}",
                self.json.display(),
                cp.version
            );
        }
        Ok(Some(cp))
    }

    /// Replaces the checkpoint atomically.
    pub(super) fn save(&self, cp: &Checkpoint) -> Result<()> {
        let mut bytes = serde_json::to_vec(cp).context("failed to encode poll state")?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(&self.json, &bytes)
    }

    /// Takes the mailbox's lock, waiting up to [`LOCK_WAIT`] for another poll.
    pub(super) async fn lock(&self, mailbox: &str) -> Result<std::fs::File> {
        let lock = crate::fsutil::wait_for_lock(
            || crate::fsutil::try_lock(&self.lock),
            Some(LOCK_WAIT),
            LOCK_POLL,
        );
        lock.await?.ok_or_else(|| {
            Busy(format!(
                "another mailpilot process has been polling {mailbox} for over {}s; try again later",
                LOCK_WAIT.as_secs()
            ))
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mailbox names become safe file names.
    #[test]
    fn state_file_names() {
        let f = StateFiles::new(Path::new("/s"), "work", "Archive/2026 Q1");
        assert_eq!(
            f.json,
            PathBuf::from("/s/poll/work/Archive%2F2026%20Q1.json")
        );
    }
}

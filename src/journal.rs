//! The send journal of a mail-merge batch: one entry per message the server accepted (or refused
//! permanently), durable before the next message is sent, so a rerun of the batch — on this host
//! or, with the state database, on any other — skips what the journal holds.
//!
//! - Files: `journal/<batch>.jsonl`, one JSON line per entry, fsynced; a line torn by a crash is
//!   cut off on the next open; `journal/<batch>.lock` stops two runs of one batch from overlapping.
//! - The state database: a row of `journal` per entry, committed; an advisory lock per batch.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use crate::error::Busy;

/// One journaled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The stable message key.
    pub key: String,
    /// Where the row came from (`rows.csv:7`).
    pub row: String,
    /// The Message-ID sent.
    pub message_id: String,
    /// When, unix seconds.
    pub at: u64,
    /// What the server did with it.
    #[serde(rename = "status")]
    pub outcome: Outcome,
    /// The server's reply.
    pub reply: String,
}

/// What the server did with a journaled message (the `status` of a journal line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Accepted (250).
    Sent,
    /// Refused permanently (5xx); a rerun does not try it again.
    Rejected,
}

/// A message key as the first 128 bits of its SHA-256: what a batch remembers of each message
/// (two keys sharing one is as likely as guessing a random 128-bit number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 16]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> KeyDigest {
        let full = Sha256::digest(key.as_bytes());
        let mut d = [0u8; 16];
        d.copy_from_slice(&full[..16]);
        KeyDigest(d)
    }
}

/// An open journal holding its batch lock.
#[derive(Debug)]
pub struct Journal {
    place: Place,
    /// The keys journaled (their digests: a 100,000-row batch keeps 1.6 MB of them, not its lines).
    done: HashSet<KeyDigest>,
}

/// Where a journal's entries go.
#[derive(Debug)]
enum Place {
    File {
        path: PathBuf,
        file: File,
        _lock: File,
    },
    Db {
        db: Arc<Db>,
        batch: String,
        /// The batch lock; it goes with its session when the database restarts.
        lock: crate::db::Lock,
    },
}

impl Journal {
    /// Opens (or creates) the journal of `batch` in `dir` and takes the batch lock.
    ///
    /// # Errors
    /// [`Busy`] when another run holds the lock; a corrupt line (not the last) names the file and
    /// line; filesystem errors name the path.
    pub fn open(dir: &Path, batch: &str) -> Result<Journal> {
        let Some(lock) = crate::fsutil::try_lock(&dir.join(format!("{batch}.lock")))? else {
            return Err(Busy(format!(
                "another mailpilot process is sending batch {batch} right now"
            ))
            .into());
        };
        let path = dir.join(format!("{batch}.jsonl"));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to open journal {}", path.display()))?;
        let done = read_keys(&mut file, &path)?;
        Ok(Journal {
            place: Place::File {
                path,
                file,
                _lock: lock,
            },
            done,
        })
    }

    /// Opens the journal of `batch` in the state database and takes the batch lock there.
    ///
    /// # Errors
    /// [`Busy`] when another run (on any host) holds the lock; the database is unavailable.
    pub async fn open_db(db: Arc<Db>, batch: &str) -> Result<Journal> {
        let Some(lock) = db.lock(&format!("batch {batch}"), Duration::ZERO).await? else {
            return Err(Busy(format!(
                "another mailpilot process is sending batch {batch} right now"
            ))
            .into());
        };
        let rows = db
            .query("SELECT key FROM journal WHERE batch = $1", &[&batch])
            .await
            .with_context(|| format!("failed to read the journal of batch {batch}"))?;
        let done = rows
            .iter()
            .map(|r| KeyDigest::of(r.get::<_, &str>(0)))
            .collect();
        Ok(Journal {
            place: Place::Db {
                db,
                batch: batch.to_string(),
                lock,
            },
            done,
        })
    }

    /// Where the journal is, for messages: its file, or its batch in the state database.
    pub fn describe(&self) -> String {
        match &self.place {
            Place::File { path, .. } => path.display().to_string(),
            Place::Db { db, batch, .. } => {
                format!("batch {batch} in the state database {}", db.target())
            }
        }
    }

    /// Whether the message with `key` was already handled (sent or refused).
    pub fn contains(&self, key: &str) -> bool {
        self.done.contains(&KeyDigest::of(key))
    }

    /// Appends `entry` and starts making it durable: the line is written now, its fsync runs on a
    /// blocking thread, and the returned [`Syncing`] says when it is done. A batch overlaps it
    /// with the next message's envelope and waits for it before that message's data, so no
    /// message is accepted while the one before it is not yet journaled on disk.
    ///
    /// # Errors
    /// The write failed, or the file cannot be handed to the fsync thread.
    pub fn append(&mut self, entry: &Entry) -> Result<Syncing> {
        let mut line = serde_json::to_vec(entry).context("failed to encode journal entry")?;
        let what = self.describe();
        let syncing = match &mut self.place {
            Place::File { file, .. } => {
                line.push(b'\n');
                let failed = || format!("failed to append to journal {what}");
                file.write_all(&line).with_context(failed)?;
                let file = file.try_clone().with_context(failed)?;
                tokio::task::spawn_blocking(move || file.sync_data().map_err(anyhow::Error::from))
            }
            Place::Db { db, batch, lock } => {
                let (db, batch, key) = (db.clone(), batch.clone(), entry.key.clone());
                let text = String::from_utf8(line).context("a journal entry is not UTF-8")?;
                let lost = !lock.is_held();
                tokio::spawn(async move {
                    db.execute(
                        "INSERT INTO journal (batch, key, entry) VALUES ($1, $2, $3::text::jsonb)
                         ON CONFLICT (batch, key) DO UPDATE SET entry = excluded.entry",
                        &[&batch, &key, &text],
                    )
                    .await?;
                    if lost {
                        // The entry is in; but another host may be sending this batch now, so
                        // no further message goes out from here (a rerun resumes).
                        return Err(Busy(format!(
                            "the lock of batch {batch} was lost with its database session; run the batch again to finish it"
                        ))
                        .into());
                    }
                    Ok(())
                })
            }
        };
        self.done.insert(KeyDigest::of(&entry.key));
        Ok(Syncing {
            durable: syncing,
            what,
        })
    }
}

/// A journal entry on its way to disk or into the database ([`Journal::append`]).
#[derive(Debug)]
pub struct Syncing {
    durable: tokio::task::JoinHandle<Result<()>>,
    what: String,
}

impl Syncing {
    /// Waits until the entry is durable (fsynced, or committed).
    ///
    /// # Errors
    /// The fsync or the insert failed.
    pub async fn wait(self) -> Result<()> {
        let failed = || format!("failed to append to journal {}", self.what);
        match self.durable.await {
            // Written, but the batch must stop (its lock was lost): say that, not "failed".
            Ok(Err(e)) if e.downcast_ref::<Busy>().is_some() => Err(e),
            Ok(result) => result.with_context(failed),
            Err(e) => Err(anyhow::Error::new(e)).with_context(failed),
        }
    }
}

/// Every entry of the journal file `path`, in order (a torn last line is left out).
///
/// # Errors
/// The file cannot be read, or a complete line is corrupt.
pub fn entries_in_file(path: &Path) -> Result<Vec<Entry>> {
    let bytes =
        fs::read(path).with_context(|| format!("failed to read journal {}", path.display()))?;
    let mut entries = Vec::new();
    each_entry(&bytes[..complete_lines(&bytes)], path, |e| entries.push(e))?;
    Ok(entries)
}

/// How many leading bytes of a journal are whole lines (a crash may leave half of the last).
fn complete_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

/// Hands each entry of whole journal lines to `each`, one at a time (a long batch's entries are
/// never all in memory); a corrupt line names the file and line.
fn each_entry(bytes: &[u8], path: &Path, mut each: impl FnMut(Entry)) -> Result<()> {
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(entry) => each(entry),
            Err(e) => bail!(
                "journal {}:{} is corrupt ({e}); move it away to resend the whole batch",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(())
}

/// Every journal entry in the state database: `(batch, entry)`, by batch.
///
/// # Errors
/// The database is unavailable, or an entry is corrupt.
pub async fn entries_in_db(db: &Db) -> Result<Vec<(String, Entry)>> {
    let rows = db
        .query(
            "SELECT batch, entry::text FROM journal ORDER BY batch, entry->>'at', key",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let batch: String = r.get(0);
            let entry = serde_json::from_str(r.get(1))
                .with_context(|| format!("a journal entry of batch {batch} is corrupt"))?;
            Ok((batch, entry))
        })
        .collect()
}

/// Reads the keys of all entries; a last line without its newline (a crash mid-append) is cut off.
fn read_keys(file: &mut File, path: &Path) -> Result<HashSet<KeyDigest>> {
    let bytes =
        fs::read(path).with_context(|| format!("failed to read journal {}", path.display()))?;
    let complete = complete_lines(&bytes);
    if complete < bytes.len() {
        file.set_len(complete as u64)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("failed to cut the torn last line of {}", path.display()))?;
        file.seek(SeekFrom::End(0))
            .with_context(|| format!("failed to seek in {}", path.display()))?;
        tracing::warn!(journal = %path.display(), "cut off a torn last line (a run was killed mid-write)");
    }
    let mut keys = HashSet::new();
    each_entry(&bytes[..complete], path, |entry| {
        keys.insert(KeyDigest::of(&entry.key));
    })?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> Entry {
        Entry {
            key: key.into(),
            row: "r.csv:2".into(),
            message_id: format!("<{key}@x>"),
            at: 1,
            outcome: Outcome::Sent,
            reply: "250 ok".into(),
        }
    }

    /// Entries survive reopening; a torn last line is cut off; the lock is exclusive.
    #[tokio::test]
    async fn reopen_torn_and_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path(), "b1").expect("open");
        for key in ["k1", "k2"] {
            j.append(&entry(key))
                .expect("append")
                .wait()
                .await
                .expect("sync");
        }
        let busy = Journal::open(dir.path(), "b1").expect_err("locked");
        assert!(busy.downcast_ref::<Busy>().is_some());
        drop(j);
        let path = dir.path().join("b1.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"key\":\"k3\",\"ro").expect("torn write");
        let mut j = Journal::open(dir.path(), "b1").expect("reopen");
        assert!(j.contains("k1") && j.contains("k2") && !j.contains("k3"));
        j.append(&entry("k3"))
            .expect("append after repair")
            .wait()
            .await
            .expect("sync");
        drop(j);
        let j = Journal::open(dir.path(), "b1").expect("reopen");
        assert!(j.contains("k3"));
        assert_eq!(fs::read_to_string(&path).expect("read").lines().count(), 3);
    }
}

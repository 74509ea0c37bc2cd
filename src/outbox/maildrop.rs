//! The drop directory: how other local users' `sendmail` hands a message to the service user's
//! outbox without being able to read its tokens (Postfix's maildrop is the model).
//!
//! The directory belongs to the service user (who runs the daemon) and is sticky and writable but
//! not readable by the others (e.g. `chmod 1733`, or `3730` with a group): a caller creates
//! `.RANDOM.tmp`, writes, fsyncs and renames it to `RANDOM.drop`; names are 128 random bits, so no
//! one can guess, list or replace another's message. The daemon moves each file into the outbox
//! (fsynced there) and only then removes it. A caller cannot fsync a directory it may not read —
//! Postfix's postdrop has the same limit —, so the file's own fsync and the rename are what
//! `sendmail` waits for.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ring::rand::SecureRandom;

use super::{Head, Outbox};
use crate::outbox::files::read_mail;

/// A drop directory.
#[derive(Debug, Clone)]
pub struct MailDrop {
    dir: PathBuf,
}

impl MailDrop {
    /// The drop directory at `dir`.
    pub fn new(dir: &Path) -> MailDrop {
        MailDrop {
            dir: dir.to_path_buf(),
        }
    }

    /// Whether this process should drop its messages here rather than use its own outbox: the
    /// directory exists and belongs to another user (the service user).
    pub fn is_for_this_user(&self) -> bool {
        let (Ok(dir), Ok(me)) = (fs::metadata(&self.dir), fs::metadata("/proc/self")) else {
            return false;
        };
        dir.is_dir() && dir.uid() != me.uid()
    }

    /// Leaves a message (head line, then the message) for the service user's daemon; returns its
    /// name.
    ///
    /// # Errors
    /// The directory is missing or not writable, or the write fails.
    pub fn leave(&self, head: &Head, message: &[u8]) -> Result<String> {
        let mut random = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| anyhow::anyhow!("no random numbers from the system"))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let done = self.dir.join(format!("{name}.drop"));
        let failed = || format!("failed to leave the message in {}", self.dir.display());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            .with_context(failed)?;
        let mut bytes = serde_json::to_vec(head)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(message);
        let written = file
            .write_all(&bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&tmp, &done));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(failed);
        }
        Ok(name)
    }

    /// Moves every dropped message into `outbox` for `account` (whatever account the caller
    /// named: the drop directory serves the `[sendmail]` account); returns the outbox ids. A file
    /// that is not a message is renamed `NAME.bad` and reported, once.
    ///
    /// # Errors
    /// The directory cannot be read, or the outbox cannot be written.
    pub async fn pick_up(&self, outbox: &Outbox, account: &str) -> Result<PickedUp> {
        let mut picked = PickedUp::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(picked),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read {}", self.dir.display()))
            }
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file_name.strip_suffix(".drop") else {
                continue;
            };
            let path = entry.path();
            match read_dropped(&path) {
                Ok((mut head, message)) => {
                    head.account = account.to_string();
                    picked.queued.push(outbox.put(head, message).await?);
                    fs::remove_file(&path)
                        .with_context(|| format!("failed to remove {}", path.display()))?;
                }
                Err(e) => {
                    let _ = fs::rename(&path, self.dir.join(format!("{name}.bad")));
                    picked
                        .bad
                        .push((name.to_string(), crate::error::error_text(e.as_ref())));
                }
            }
        }
        Ok(picked)
    }
}

/// What [`MailDrop::pick_up`] did.
#[derive(Debug, Default)]
pub struct PickedUp {
    /// Outbox ids of the messages moved in.
    pub queued: Vec<String>,
    /// Files that were not messages (name, why), renamed `NAME.bad`.
    pub bad: Vec<(String, String)>,
}

/// A dropped file as the outbox reads its own (`read_mail`), with a sane recipient count: the
/// drop directory is written by other users.
fn read_dropped(path: &Path) -> Result<(Head, Vec<u8>)> {
    let (head, message) = read_mail(path)?;
    if head.to.is_empty() || head.to.len() > 1000 {
        bail!("{} recipients", head.to.len());
    }
    Ok((head, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message left in the drop directory moves into the outbox under the daemon's account (the
    /// caller's is not trusted); a file that is not a message is renamed `.bad` with the reason,
    /// and nothing else is touched.
    #[tokio::test]
    async fn pick_up_moves_messages_and_sets_bad_files_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drop = MailDrop::new(&dir.path().join("drop"));
        fs::create_dir(dir.path().join("drop")).expect("mkdir");
        let head = Head {
            version: 1,
            account: "whatever-the-caller-said".into(),
            from: "user@example.com".into(),
            to: vec!["ops@example.com".into()],
            queued_at: 1,
        };
        let name = drop.leave(&head, b"Subject: hi\n\nbody\n").expect("leave");
        fs::write(dir.path().join("drop/garbage.drop"), b"not a head line").expect("write");
        fs::write(dir.path().join("drop/other.txt"), b"ignored").expect("write");
        let outbox = Outbox::files(&dir.path().join("state"));
        let picked = drop.pick_up(&outbox, "work").await.expect("pick up");
        assert_eq!(picked.queued.len(), 1);
        assert_eq!(picked.bad.len(), 1);
        assert_eq!(picked.bad[0].0, "garbage");
        assert!(picked.bad[0].1.contains("no head line"), "{:?}", picked.bad);
        let (queued, message) = outbox.load(&picked.queued[0]).await.expect("load");
        assert_eq!(queued.account, "work");
        assert_eq!(message, b"Subject: hi\n\nbody\n");
        assert!(!dir.path().join(format!("drop/{name}.drop")).exists());
        assert!(dir.path().join("drop/garbage.bad").exists());
        assert!(dir.path().join("drop/other.txt").exists());
        assert!(drop
            .pick_up(&outbox, "work")
            .await
            .expect("again")
            .queued
            .is_empty());
    }
}

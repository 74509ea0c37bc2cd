//! Checkpointed polling: each new message of a mailbox is handed to a handler once, in UID order,
//! and the checkpoint (`uidvalidity`, `last_uid`) advances — durably — after each handled message.
//! A crash re-delivers at most the message in hand and never skips one. A per-mailbox lock keeps
//! two overlapping runs from handling the same message.
//!
//! - this file: the settings, the [`Sink`] that receives what the user sees, and [`Poller`], which
//!   runs one pass (or, in `watch`, many: IDLE, reconnects);
//! - `checkpoint`: the checkpoint and lock files;
//! - `handler`: what is done with each message (JSON, `--save`, `--exec`).
//!
//! The library never prints: JSON documents and notices go to the caller's [`Sink`] (ripgrep's
//! printers take the caller's writer the same way).

mod checkpoint;
mod handler;
mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{Account, SecretSource};
use crate::error::UsageError;
use crate::imap::{Imap, Selected};
use crate::oauth::{TokenSource, TokenStore};
use checkpoint::{Checkpoint, StateFiles, STATE_VERSION};
use handler::Fetched;

pub use handler::MessageJson;
pub use watch::WatchOptions;

/// Where the first poll of a mailbox starts (later polls continue from the checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nothing chosen: the first poll refuses to guess.
    Unset,
    /// Messages that arrived in the last given time.
    Since(Duration),
    /// Only messages arriving from now on.
    FromNow,
    /// Every message in the mailbox.
    All,
}

/// What to do with each message.
#[derive(Debug, Clone)]
pub enum Handler {
    /// One JSON object per message on stdout.
    Json {
        /// Include the HTML body.
        html: bool,
        /// Write attachments into this directory.
        save_attachments: Option<PathBuf>,
    },
    /// Run a shell command with the raw message on stdin; non-zero stops the poll.
    Exec(String),
    /// Write `<uidvalidity>-<uid>.eml` files here.
    Save(PathBuf),
}

/// What to do to a message after it was handled successfully.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    /// Add `\Seen`.
    pub mark_seen: bool,
    /// Add this flag or keyword.
    pub flag: Option<String>,
    /// Move it to this mailbox.
    pub move_to: Option<String>,
    /// Delete it.
    pub delete: bool,
}

/// One poll's settings.
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// Mailbox to read.
    pub mailbox: String,
    /// Extra IMAP SEARCH criteria (`UNSEEN`, `FROM alerts@x`).
    pub search: Option<String>,
    /// Handle at most this many messages.
    pub limit: Option<usize>,
    /// First-run start.
    pub start: Start,
    /// After a UIDVALIDITY change, handle every message again (instead of starting from now).
    pub replay: bool,
    /// The handler.
    pub handler: Handler,
    /// Post-handling actions.
    pub actions: Actions,
}

/// The outcome of a poll.
#[derive(Debug, Default, Clone, Copy)]
pub struct PollSummary {
    /// Messages handled.
    pub handled: usize,
    /// The checkpoint afterwards.
    pub last_uid: u32,
    /// Every message found was handled (no `--limit` cut, no stop).
    pub complete: bool,
}

/// Where a poll reports what the user sees: the JSON handler's documents (data) and notices that
/// do not stop it. The CLI implements it over its output module.
pub trait Sink {
    /// One message as a JSON document (the JSON handler).
    ///
    /// # Errors
    /// The document cannot be written (stdout closed).
    fn message(&self, message: &MessageJson) -> Result<()>;

    /// Something the user should know that does not stop the poll.
    fn notice(&self, notice: &Notice);
}

/// What a poll tells the user on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The mailbox was recreated (its UIDVALIDITY changed).
    UidValidityChanged {
        /// The mailbox.
        mailbox: String,
        /// The checkpoint's UIDVALIDITY.
        old: u32,
        /// The server's.
        new: u32,
        /// Whether every message is handled again (`--replay`).
        replay: bool,
    },
    /// The server has no IDLE: `watch` checks every `interval` instead.
    NoIdle {
        /// `host:port`.
        server: String,
        /// How often it checks.
        interval: Duration,
    },
    /// A transient failure: `watch` reconnects after `wait`.
    Reconnecting {
        /// What went wrong, on one line.
        error: String,
        /// The backoff before the next attempt.
        wait: Duration,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::UidValidityChanged {
                mailbox,
                old,
                new,
                replay,
            } => write!(
                f,
                "UIDVALIDITY of {mailbox} changed ({old} → {new}): the mailbox was recreated; {}",
                if *replay {
                    "handling every message again (--replay)"
                } else {
                    "continuing with new messages only (use --replay to handle all again)"
                }
            ),
            Notice::NoIdle { server, interval } => write!(
                f,
                "{server} has no IDLE; checking every {}s instead",
                interval.as_secs()
            ),
            Notice::Reconnecting { error, wait } => {
                write!(f, "{error}; reconnecting in {:.1}s", wait.as_secs_f64())
            }
        }
    }
}

/// One mailbox being polled: whose, how, and where its checkpoint and output go (ripgrep's
/// `SearchWorker` is the model: the work's fixed parts in one value, the passes as methods).
pub struct Poller<'a, S: TokenStore> {
    account: &'a Account,
    tokens: &'a TokenSource<'a, S>,
    options: &'a PollOptions,
    sink: &'a dyn Sink,
    files: StateFiles,
}

impl<'a, S: TokenStore> Poller<'a, S> {
    /// A poller of `options.mailbox` of `account`, keeping its checkpoint under `state_dir`.
    pub fn new(
        account: &'a Account,
        tokens: &'a TokenSource<'a, S>,
        state_dir: &Path,
        options: &'a PollOptions,
        sink: &'a dyn Sink,
    ) -> Self {
        Self {
            files: StateFiles::new(state_dir, &account.name, &options.mailbox),
            account,
            tokens,
            options,
            sink,
        }
    }

    /// Polls once: handles every new message and advances the checkpoint after each.
    ///
    /// # Errors
    /// A first poll without a start choice ([`UsageError`]), a busy mailbox
    /// ([`crate::error::Busy`]), login and network failures, or a failing handler (the checkpoint
    /// stays before that message).
    pub async fn once(&self, now: u64) -> Result<PollSummary> {
        let _lock = self.files.lock(&self.options.mailbox).await?;
        self.require_start()?;
        let mut imap = Imap::open(self.account, self.tokens).await?;
        let summary = self.select_and_pass(&mut imap, now, &|| false).await?;
        imap.logout().await;
        Ok(summary)
    }

    /// The first poll of a mailbox must say where to start.
    fn require_start(&self) -> Result<()> {
        if self.files.load()?.is_none() && self.options.start == Start::Unset {
            return Err(UsageError(format!(
                "first poll of {} for account \"{}\": choose where to start with --since 2d, --from-now or --all",
                self.options.mailbox, self.account.name
            ))
            .into());
        }
        Ok(())
    }

    /// Selects the mailbox, settles the checkpoint (first run, UIDVALIDITY change) and runs a
    /// pass; `stop` is asked between messages.
    async fn select_and_pass(
        &self,
        imap: &mut Imap,
        now: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<PollSummary> {
        let selected = imap.select(&self.options.mailbox).await?;
        let mut checkpoint = self.starting_point(self.files.load()?, selected, now)?;
        let windowed = checkpoint.since.is_some();
        let summary = self.pass(imap, &mut checkpoint, stop).await?;
        if windowed && summary.complete {
            // The window is done: what is older than it was passed over on purpose.
            checkpoint.since = None;
            checkpoint.last_uid = checkpoint.last_uid.max(selected.uidnext.saturating_sub(1));
            self.files.save(&checkpoint)?;
        }
        Ok(PollSummary {
            last_uid: checkpoint.last_uid,
            ..summary
        })
    }

    /// Handles every message after the checkpoint (only those in its SINCE window, if it has
    /// one), checkpointing after each; `stop` is asked between messages.
    async fn pass(
        &self,
        imap: &mut Imap,
        checkpoint: &mut Checkpoint,
        stop: &dyn Fn() -> bool,
    ) -> Result<PollSummary> {
        let options = self.options;
        // A first `--since` poll's window stays in force until a pass completes.
        let criteria = match (checkpoint.since.as_deref(), &options.search) {
            (Some(d), Some(c)) => Some(format!("SINCE {d} {c}")),
            (Some(d), None) => Some(format!("SINCE {d}")),
            (None, c) => c.clone(),
        };
        let mut uids = imap
            .uids_after(checkpoint.last_uid, criteria.as_deref())
            .await?;
        let mut summary = PollSummary {
            handled: 0,
            last_uid: checkpoint.last_uid,
            complete: true,
        };
        if let Some(limit) = options.limit {
            summary.complete = uids.len() <= limit;
            uids.truncate(limit);
        }
        for uid in uids {
            if stop() {
                summary.complete = false;
                break;
            }
            let Some(raw) = imap.fetch(uid).await? else {
                tracing::info!(uid, "message vanished before it could be fetched; skipping");
                continue;
            };
            let message = Fetched {
                account: &self.account.name,
                mailbox: &options.mailbox,
                uidvalidity: checkpoint.uidvalidity,
                uid,
                raw: &raw,
                secret_env: match &self.account.client_secret {
                    Some(SecretSource::Env(var)) => Some(var),
                    _ => None,
                },
            };
            handler::handle(&message, &options.handler, self.sink)
                .await
                .with_context(|| {
                    format!(
                        "stopped at UID {uid} of {}; the next poll starts with it",
                        options.mailbox
                    )
                })?;
            apply_actions(imap, uid, &options.actions).await?;
            checkpoint.last_uid = uid;
            self.files.save(checkpoint)?;
            summary.handled += 1;
            summary.last_uid = uid;
        }
        Ok(summary)
    }

    /// The checkpoint to continue from (with the SINCE window of a first `--since` poll).
    fn starting_point(
        &self,
        saved: Option<Checkpoint>,
        selected: Selected,
        now: u64,
    ) -> Result<Checkpoint> {
        let options = self.options;
        let fresh = |last_uid: u32, since: Option<String>| Checkpoint {
            version: STATE_VERSION,
            uidvalidity: selected.uidvalidity,
            last_uid,
            since,
        };
        let from_now = fresh(selected.uidnext.saturating_sub(1), None);
        let checkpoint = match &saved {
            Some(cp) if cp.uidvalidity == selected.uidvalidity => cp.clone(),
            Some(cp) => {
                self.sink.notice(&Notice::UidValidityChanged {
                    mailbox: options.mailbox.clone(),
                    old: cp.uidvalidity,
                    new: selected.uidvalidity,
                    replay: options.replay,
                });
                if options.replay {
                    fresh(0, None)
                } else {
                    from_now
                }
            }
            None => match options.start {
                Start::FromNow => from_now,
                Start::All => fresh(0, None),
                Start::Since(d) => fresh(
                    0,
                    Some(imap_date(&crate::clock::rfc3339(
                        now.saturating_sub(d.as_secs()),
                    ))),
                ),
                Start::Unset => bail!("internal: unset start"),
            },
        };
        if saved.as_ref() != Some(&checkpoint) {
            self.files.save(&checkpoint)?;
        }
        Ok(checkpoint)
    }
}

/// `2026-11-27T…` → `27-Nov-2026` (IMAP date).
fn imap_date(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month: usize = rfc3339[5..7].parse().unwrap_or(1);
    format!(
        "{}-{}-{}",
        &rfc3339[8..10],
        MONTHS[month.clamp(1, 12) - 1],
        &rfc3339[0..4]
    )
}

async fn apply_actions(imap: &mut Imap, uid: u32, actions: &Actions) -> Result<()> {
    if actions.mark_seen {
        imap.add_flag(uid, "\\Seen").await?;
    }
    if let Some(flag) = &actions.flag {
        imap.add_flag(uid, flag).await?;
    }
    if let Some(target) = &actions.move_to {
        imap.move_to(uid, target).await?;
    } else if actions.delete {
        imap.delete(uid).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IMAP dates.
    #[test]
    fn helpers() {
        assert_eq!(imap_date("2026-11-27T16:22:19Z"), "27-Nov-2026");
    }
}

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
pub mod handler;
mod pass;
mod watch;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::clock::Clock;
use crate::config::Account;
use crate::error::UsageError;
use crate::imap::{Access, Imap, Selected};
use crate::oauth::{TokenSource, TokenStore};
use checkpoint::{Checkpoint, Checkpoints, STATE_VERSION};

pub use checkpoint::{
    all as all_checkpoints, load_json as checkpoint_json, save_json as save_checkpoint_json,
};
pub use handler::{Fetched, MessageJson};
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

impl Actions {
    /// No action: the mailbox is only read (EXAMINE, and one streamed FETCH).
    pub fn is_none(&self) -> bool {
        !self.mark_seen && self.flag.is_none() && self.move_to.is_none() && !self.delete
    }
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
    /// Try the quarantined messages again before the new ones.
    pub retry_quarantined: bool,
    /// The handler.
    pub handler: Handler,
    /// Post-handling actions.
    pub actions: Actions,
}

/// The outcome of a poll.
#[derive(Debug, Default, Clone)]
pub struct PollSummary {
    /// Messages handled.
    pub handled: usize,
    /// The checkpoint afterwards.
    pub last_uid: u32,
    /// Every message found was handled (no `--limit` cut, no stop).
    pub complete: bool,
    /// Messages quarantined in this run, with the reason: they cannot be handled, were passed
    /// over (the pipeline goes on), and stay in the mailbox for `--retry-quarantined`.
    pub quarantined: Vec<(u32, String)>,
}

/// What became of one message of a pass.
enum Step {
    /// Handed over (and its actions done).
    Handled,
    /// Cannot be handled; passed over with this reason.
    Quarantined(String),
    /// The server confirms it no longer exists.
    Gone,
}

/// Where a poll reports what the user sees: the JSON handler's documents (data) and notices that
/// do not stop it. The CLI implements it over its output module.
pub trait Sink {
    /// One message as a JSON document (the JSON handler).
    ///
    /// # Errors
    /// The document cannot be written (stdout closed).
    fn message(&self, message: &MessageJson<'_>) -> Result<()>;

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
    /// A message that cannot be handled was quarantined: passed over, recorded, left in place.
    Quarantined {
        /// The mailbox.
        mailbox: String,
        /// Its UID.
        uid: u32,
        /// Why.
        reason: String,
    },
    /// A message disappeared (expunged by someone else) between the search and its fetch.
    Vanished {
        /// The mailbox.
        mailbox: String,
        /// Its UID.
        uid: u32,
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
            Notice::Quarantined {
                mailbox,
                uid,
                reason,
            } => write!(
                f,
                "quarantined UID {uid} of {mailbox}: {reason}; later mail goes on (`--retry-quarantined` tries it again)"
            ),
            Notice::Vanished { mailbox, uid } => write!(
                f,
                "UID {uid} of {mailbox} was deleted before it could be fetched; skipping it"
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
    clock: &'a dyn Clock,
    files: Checkpoints,
}

impl<'a, S: TokenStore> Poller<'a, S> {
    /// A poller of `options.mailbox` of `account`, keeping its checkpoint in `home`.
    pub fn new(
        account: &'a Account,
        tokens: &'a TokenSource<'a, S>,
        home: &crate::db::StateHome,
        options: &'a PollOptions,
        sink: &'a dyn Sink,
        clock: &'a dyn Clock,
    ) -> Self {
        Self {
            files: Checkpoints::new(home, &account.name, &options.mailbox),
            account,
            tokens,
            options,
            sink,
            clock,
        }
    }

    /// Polls once: handles every new message and advances the checkpoint after each.
    ///
    /// # Errors
    /// A first poll without a start choice ([`UsageError`]), a busy mailbox
    /// ([`crate::error::Busy`]), login and network failures, or a failing handler (the checkpoint
    /// stays before that message).
    pub async fn once(&self) -> Result<PollSummary> {
        let _lock = self.files.lock(&self.options.mailbox).await?;
        self.require_start().await?;
        let mut imap = Imap::open(self.account, self.tokens).await?;
        if let Some(unchanged) = self.nothing_new(&mut imap).await? {
            imap.logout().await;
            return Ok(unchanged);
        }
        let summary = self.select_and_pass(&mut imap, &|| false).await?;
        imap.logout().await;
        Ok(summary)
    }

    /// One `STATUS` instead of SELECT and SEARCH when the checkpoint shows nothing can have
    /// arrived since (same UIDVALIDITY, UIDNEXT right after the last UID handed over): the summary
    /// of an empty pass then. Not for a first poll's SINCE window or `--retry-quarantined`.
    async fn nothing_new(&self, imap: &mut Imap) -> Result<Option<PollSummary>> {
        let Some(checkpoint) = self.files.load().await? else {
            return Ok(None);
        };
        if checkpoint.since.is_some() || self.options.retry_quarantined {
            return Ok(None);
        }
        let status = imap.status(&self.options.mailbox).await?;
        let unchanged = status.uidvalidity == checkpoint.uidvalidity
            && status.uidnext <= checkpoint.last_uid.saturating_add(1);
        Ok(unchanged.then(|| PollSummary {
            last_uid: checkpoint.last_uid,
            complete: true,
            ..PollSummary::default()
        }))
    }

    /// The first poll of a mailbox must say where to start.
    async fn require_start(&self) -> Result<()> {
        if self.files.load().await?.is_none() && self.options.start == Start::Unset {
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
        stop: &dyn Fn() -> bool,
    ) -> Result<PollSummary> {
        let access = if self.options.actions.is_none() {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let selected = imap.select(&self.options.mailbox, access).await?;
        let mut checkpoint = self
            .starting_point(self.files.load().await?, selected)
            .await?;
        if self.options.retry_quarantined {
            self.retry_quarantined(imap, &mut checkpoint).await?;
        }
        let windowed = checkpoint.since.is_some();
        let summary = self
            .pass(imap, &mut checkpoint, Some(selected.uidnext), stop)
            .await?;
        if windowed && summary.complete {
            // The window is done: what is older than it was passed over on purpose.
            checkpoint.since = None;
            checkpoint.last_uid = checkpoint.last_uid.max(selected.uidnext.saturating_sub(1));
            self.files.save(&checkpoint).await?;
        }
        Ok(PollSummary {
            last_uid: checkpoint.last_uid,
            ..summary
        })
    }

    /// Tries the quarantined messages again: handled ones leave the list, gone ones too; the
    /// rest stay with their new reason.
    async fn retry_quarantined(&self, imap: &mut Imap, checkpoint: &mut Checkpoint) -> Result<()> {
        let uids: Vec<u32> = checkpoint.quarantined.iter().map(|q| q.uid).collect();
        let sizes = imap.sizes(&uids).await?;
        for uid in uids {
            let step = match sizes.get(&uid) {
                None if !imap.has(uid).await? => Step::Gone,
                size => {
                    self.one(imap, checkpoint.uidvalidity, uid, size.copied())
                        .await?
                }
            };
            match step {
                Step::Handled | Step::Gone => checkpoint.quarantined.retain(|q| q.uid != uid),
                Step::Quarantined(reason) => checkpoint.quarantine(uid, &reason, self.clock.now()),
            }
            self.files.save(checkpoint).await?;
        }
        Ok(())
    }

    /// The checkpoint to continue from (with the SINCE window of a first `--since` poll).
    async fn starting_point(
        &self,
        saved: Option<Checkpoint>,
        selected: Selected,
    ) -> Result<Checkpoint> {
        let now = self.clock.now();
        let options = self.options;
        let fresh = |last_uid: u32, since: Option<String>| Checkpoint {
            version: STATE_VERSION,
            uidvalidity: selected.uidvalidity,
            last_uid,
            since,
            quarantined: Vec::new(),
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
            self.files.save(&checkpoint).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// IMAP dates.
    #[test]
    fn helpers() {
        assert_eq!(imap_date("2026-11-27T16:22:19Z"), "27-Nov-2026");
    }
}

//! One pass over the new messages of a mailbox, in UID order, checkpointing after each.
//!
//! Which UIDs are new and how large they are comes from one `UID FETCH last+1:* (RFC822.SIZE)`
//! (or `UID SEARCH` plus sizes when there are search criteria). Then:
//! - with no action to apply (the mailbox is only read), every new message comes in **one**
//!   `UID FETCH`, handled and checkpointed as it arrives, one body in memory at a time;
//! - with actions (mark seen, flag, move, delete), or when the streamed answer misses a message,
//!   each message is fetched, handled and acted on in turn.
//!
//! Either way a message is checkpointed only after it was handled (and acted on), so a crash
//! re-delivers at most the message in hand and never skips one.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{handler, Checkpoint, Fetched, Notice, PollSummary, Poller, Step};
use crate::config::SecretSource;
use crate::error::ServerError;
use crate::imap::Imap;
use crate::oauth::TokenStore;

/// How the streamed part of a pass ended.
enum Streamed {
    /// Every message was handled.
    Done,
    /// `stop` asked to stop.
    Stopped,
    /// The message at this index was not in the answer (or came out of order): the pass goes on
    /// from it one message at a time, which tells a vanished message from a server fault.
    From(usize),
}

impl<S: TokenStore> Poller<'_, S> {
    /// Handles every message after the checkpoint (only those in its SINCE window, if it has
    /// one), checkpointing after each; `stop` is asked between messages. `uidnext` (known right
    /// after SELECT) bounds the UIDs a server may claim: one above it would move the checkpoint
    /// past mail that has not arrived yet.
    pub(super) async fn pass(
        &self,
        imap: &mut Imap,
        checkpoint: &mut Checkpoint,
        uidnext: Option<u32>,
        stop: &dyn Fn() -> bool,
    ) -> Result<PollSummary> {
        let options = self.options;
        let (mut uids, mut sizes) = self.new_uids(imap, checkpoint, uidnext).await?;
        if let (Some(next), Some(&bad)) = (uidnext, uids.iter().find(|u| Some(**u) >= uidnext)) {
            return Err(ServerError::failed(
                imap.server(),
                format!("the server listed UID {bad} in {}, but its UIDNEXT is {next}; refusing to move the checkpoint past mail that has not arrived", options.mailbox),
            )
            .into());
        }
        let mut summary = PollSummary {
            last_uid: checkpoint.last_uid,
            complete: true,
            ..PollSummary::default()
        };
        if let Some(limit) = options.limit {
            summary.complete = uids.len() <= limit;
            uids.truncate(limit);
        }
        if sizes.is_none() {
            sizes = Some(imap.sizes(&uids).await?);
        }
        let sizes = sizes.unwrap_or_default();
        let mut from = 0;
        if options.actions.is_none() {
            match self
                .streamed(imap, checkpoint, (&uids, &sizes), stop, &mut summary)
                .await?
            {
                Streamed::Done => return Ok(summary),
                Streamed::Stopped => {
                    summary.complete = false;
                    return Ok(summary);
                }
                Streamed::From(i) => from = i,
            }
        }
        for &uid in &uids[from..] {
            if stop() {
                summary.complete = false;
                break;
            }
            let step = self
                .one(imap, checkpoint.uidvalidity, uid, sizes.get(&uid).copied())
                .await?;
            self.record(checkpoint, uid, step, &mut summary).await?;
        }
        Ok(summary)
    }

    /// The new UIDs, ascending, and (without search criteria) their sizes, in one round trip.
    async fn new_uids(
        &self,
        imap: &mut Imap,
        checkpoint: &Checkpoint,
        uidnext: Option<u32>,
    ) -> Result<(Vec<u32>, Option<BTreeMap<u32, u64>>)> {
        // A first `--since` poll's window stays in force until a pass completes.
        let criteria = match (checkpoint.since.as_deref(), &self.options.search) {
            (Some(d), Some(c)) => Some(format!("SINCE {d} {c}")),
            (Some(d), None) => Some(format!("SINCE {d}")),
            (None, c) => c.clone(),
        };
        if let (None, Some(next)) = (&criteria, uidnext) {
            let sizes = imap.sizes_after(checkpoint.last_uid, next).await?;
            return Ok((sizes.keys().copied().collect(), Some(sizes)));
        }
        let uids = imap
            .uids_after(checkpoint.last_uid, criteria.as_deref())
            .await?;
        Ok((uids, None))
    }

    /// The read-only pass: every message not over `max_message_size` in one `UID FETCH`, each
    /// handled and checkpointed as it arrives (those over it are quarantined in their turn).
    async fn streamed(
        &self,
        imap: &mut Imap,
        checkpoint: &mut Checkpoint,
        (uids, sizes): (&[u32], &BTreeMap<u32, u64>),
        stop: &dyn Fn() -> bool,
        summary: &mut PollSummary,
    ) -> Result<Streamed> {
        let max = self.account.max_message_size;
        let wanted: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|u| sizes.get(u).is_some_and(|s| *s <= max))
            .collect();
        if wanted.is_empty() {
            return Ok(Streamed::From(0));
        }
        let total = wanted.iter().filter_map(|u| sizes.get(u)).sum();
        let mut bodies = imap.bodies(&wanted, total).await?;
        let mut ended = Streamed::Done;
        for (i, &uid) in uids.iter().enumerate() {
            if stop() {
                ended = Streamed::Stopped;
                break;
            }
            match sizes.get(&uid) {
                Some(size) if *size > max => {
                    self.record(checkpoint, uid, too_large(*size, max), summary)
                        .await?;
                    continue;
                }
                Some(_) => {}
                None => {
                    ended = Streamed::From(i);
                    break;
                }
            }
            match bodies.next().await? {
                Some((got, raw)) if got == uid => {
                    self.handle(checkpoint.uidvalidity, uid, raw.bytes())
                        .await?;
                    self.record(checkpoint, uid, Step::Handled, summary).await?;
                }
                _ => {
                    ended = Streamed::From(i);
                    break;
                }
            }
        }
        bodies.finish().await?;
        imap.drain();
        Ok(ended)
    }

    /// Records what became of `uid`: a quarantine is reported and kept in the checkpoint; the
    /// checkpoint moves past it, durably.
    async fn record(
        &self,
        checkpoint: &mut Checkpoint,
        uid: u32,
        step: Step,
        summary: &mut PollSummary,
    ) -> Result<()> {
        match step {
            Step::Gone => return Ok(()),
            Step::Handled => summary.handled += 1,
            Step::Quarantined(reason) => {
                self.sink.notice(&Notice::Quarantined {
                    mailbox: self.options.mailbox.clone(),
                    uid,
                    reason: reason.clone(),
                });
                checkpoint.quarantine(uid, &reason, self.clock.now());
                summary.quarantined.push((uid, reason));
            }
        }
        checkpoint.last_uid = uid;
        self.files.save(checkpoint).await?;
        summary.last_uid = uid;
        Ok(())
    }

    /// Fetches message `uid` (announced as `size` bytes), hands it over and applies the actions:
    /// too large for `max_message_size` means quarantined; not delivered means gone if the server
    /// confirms it, an error (the checkpoint stays before it) if the server still lists it.
    pub(super) async fn one(
        &self,
        imap: &mut Imap,
        uidvalidity: u32,
        uid: u32,
        size: Option<u64>,
    ) -> Result<Step> {
        let max = self.account.max_message_size;
        let raw = match size {
            Some(size) if size > max => return Ok(too_large(size, max)),
            Some(size) => imap.fetch(uid, size).await?,
            None => None,
        };
        let Some(raw) = raw else {
            return self.not_delivered(imap, uid).await;
        };
        self.handle(uidvalidity, uid, raw.bytes()).await?;
        apply_actions(imap, uid, &self.options.actions).await?;
        Ok(Step::Handled)
    }

    /// Hands message `uid` to the handler.
    async fn handle(&self, uidvalidity: u32, uid: u32, raw: &[u8]) -> Result<()> {
        let message = Fetched {
            account: &self.account.name,
            mailbox: &self.options.mailbox,
            uidvalidity,
            uid,
            raw,
            secret_env: match &self.account.client_secret {
                Some(SecretSource::Env(var)) => Some(var),
                _ => None,
            },
        };
        handler::handle(&message, &self.options.handler, self.sink)
            .await
            .with_context(|| {
                format!(
                    "stopped at UID {uid} of {}; the next poll starts with it",
                    self.options.mailbox
                )
            })
    }

    /// A message the server listed but did not deliver: gone (someone expunged it) if a search
    /// confirms it, else the server is not answering for it and the pass stops before it.
    async fn not_delivered(&self, imap: &mut Imap, uid: u32) -> Result<Step> {
        if imap.has(uid).await? {
            return Err(ServerError::failed(
                imap.server(),
                format!(
                    "the server lists UID {uid} of {} but did not return it when asked; stopping before it (the next poll starts with it)",
                    self.options.mailbox
                ),
            )
            .into());
        }
        self.sink.notice(&Notice::Vanished {
            mailbox: self.options.mailbox.clone(),
            uid,
        });
        Ok(Step::Gone)
    }
}

fn too_large(size: u64, max: u64) -> Step {
    Step::Quarantined(format!(
        "it is {size} bytes, over max_message_size ({max} bytes)"
    ))
}

async fn apply_actions(imap: &mut Imap, uid: u32, actions: &super::Actions) -> Result<()> {
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

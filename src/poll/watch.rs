//! `watch`: the same passes as `poll`, kept going — IDLE (re-issued within RFC 2177's 29
//! minutes), a reconnect with a fresh token before the token expires, a reconnect with backoff and
//! jitter after a drop, and one pass after every reconnect so nothing that arrived meanwhile is
//! missed.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch::Receiver;

use super::{Notice, PollSummary, Poller};
use crate::exit::{classify, Exit};
use crate::imap::{Imap, Wake};
use crate::oauth::TokenStore;

/// Settings of a long-running watch.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Use IDLE when the server has it (else, or when false, poll every `poll_interval`).
    pub idle: bool,
    /// How often to look for new mail without IDLE.
    pub poll_interval: Duration,
}

/// RFC 2177: clients should re-issue IDLE at least every 29 minutes; servers may drop idle clients
/// after 30.
const IDLE_REISSUE: Duration = Duration::from_secs(25 * 60);
/// First wait before reconnecting after a failure; grows by [`BACKOFF_GROWTH`] up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How much each failed round lengthens the wait: 1 s, 4 s, 16 s, then 60 s — a quick first
/// retry after a blip, and about eight logins in five minutes against a server that keeps
/// dropping the session.
const BACKOFF_GROWTH: u32 = 4;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How one connected round of a watch ended.
enum RoundEnd {
    Shutdown,
    Reconnect,
}

/// A watch in progress: its settings and stop signal, and what it has done so far.
struct Watch {
    settings: WatchOptions,
    shutdown: Receiver<bool>,
    total: PollSummary,
    backoff: Duration,
    /// The mailbox lock, held for the whole watch (taken again if the database lost it).
    held: super::checkpoint::Held,
}

impl Watch {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

impl<S: TokenStore> Poller<'_, S> {
    /// Watches the mailbox until `shutdown` turns true, handling new messages exactly like
    /// [`Poller::once`]. Shutdown finishes the message in hand.
    ///
    /// # Errors
    /// As [`Poller::once`], except that transient failures are retried rather than returned.
    pub async fn watch(
        &self,
        settings: WatchOptions,
        shutdown: Receiver<bool>,
    ) -> Result<PollSummary> {
        let held = self.files.lock(&self.options.mailbox).await?;
        self.require_start().await?;
        let mut w = Watch {
            settings,
            shutdown,
            total: PollSummary::default(),
            backoff: FIRST_BACKOFF,
            held,
        };
        while !w.stopping() {
            let started = tokio::time::Instant::now();
            let result = match self.relock(&mut w).await {
                Ok(()) => self.round(&mut w).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(RoundEnd::Shutdown) => break,
                Ok(RoundEnd::Reconnect) => continue,
                Err(e) if classify(&e) == Exit::Transient => {
                    if started.elapsed() >= MAX_BACKOFF {
                        // A session that lasted this long was working (a NAT timeout, a restart).
                        w.backoff = FIRST_BACKOFF;
                    }
                    let wait = jitter(w.backoff);
                    self.sink.notice(&Notice::Reconnecting {
                        error: crate::error::error_text(e.as_ref()),
                        wait,
                    });
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = w.shutdown.wait_for(|s| *s) => break,
                    }
                    w.backoff = (w.backoff * BACKOFF_GROWTH).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(w.total)
    }

    /// Takes the mailbox lock again when the database lost it (a restart, a broken connection):
    /// another watcher may hold it now, and then this one waits ([`crate::error::Busy`], retried).
    async fn relock(&self, w: &mut Watch) -> Result<()> {
        if w.held.is_lost() {
            tracing::info!(mailbox = %self.options.mailbox, "the poll lock was lost with its database session; taking it again");
            w.held = self.files.lock(&self.options.mailbox).await?;
        }
        Ok(())
    }

    /// One connection: log in, catch up, then wait for news and handle it until the token needs
    /// renewing or shutdown.
    async fn round(&self, w: &mut Watch) -> Result<RoundEnd> {
        let mut imap = Imap::open(self.account, self.tokens).await?;
        let flag = w.shutdown.clone();
        let stop = move || *flag.borrow();
        let summary = self.select_and_pass(&mut imap, &stop).await?;
        w.total.handled += summary.handled;
        w.total.quarantined.extend(summary.quarantined);
        // The backoff starts over only after a round that did work (handled mail, or lasted
        // through a wait): a server that accepts the login and then drops the session must not
        // be hammered once a second.
        if summary.handled > 0 {
            w.backoff = FIRST_BACKOFF;
        }
        let use_idle = w.settings.idle && imap.can_idle().await?;
        if w.settings.idle && !use_idle {
            self.sink.notice(&Notice::NoIdle {
                server: imap.server().to_string(),
                interval: w.settings.poll_interval,
            });
        }
        loop {
            if w.stopping() {
                imap.logout().await;
                return Ok(RoundEnd::Shutdown);
            }
            let left = imap.renew_at.saturating_sub(self.clock.now());
            if left == 0 {
                tracing::info!(account = %self.account.name, "token nearly expired; reconnecting with a fresh one");
                imap.logout().await;
                return Ok(RoundEnd::Reconnect);
            }
            let wait = Duration::from_secs(left).min(if use_idle {
                IDLE_REISSUE
            } else {
                w.settings.poll_interval
            });
            let Some(back) = wait_for_news(imap, use_idle, wait, &mut w.shutdown).await? else {
                return Ok(RoundEnd::Shutdown);
            };
            imap = back;
            w.backoff = FIRST_BACKOFF;
            if w.held.is_lost() {
                imap.logout().await;
                return Err(crate::error::Busy(format!(
                    "the lock of {} was lost with its database session",
                    self.options.mailbox
                ))
                .into());
            }
            let Some(mut checkpoint) = self.files.load().await? else {
                anyhow::bail!(
                    "poll state of {} vanished while watching",
                    self.options.mailbox
                );
            };
            let summary = self.pass(&mut imap, &mut checkpoint, None, &stop).await?;
            w.total.handled += summary.handled;
            w.total.quarantined.extend(summary.quarantined);
            w.total.last_uid = summary.last_uid;
        }
    }
}

/// Waits up to `wait` for the server to report news (IDLE) or just waits and asks (NOOP).
/// `None` when shutdown came first (the session is logged out then).
async fn wait_for_news(
    mut imap: Imap,
    use_idle: bool,
    wait: Duration,
    shutdown: &mut Receiver<bool>,
) -> Result<Option<Imap>> {
    let deadline = tokio::time::Instant::now() + wait;
    if use_idle {
        let (back, wake) = imap.idle(deadline, shutdown).await?;
        if wake == Wake::Shutdown {
            back.logout().await;
            return Ok(None);
        }
        return Ok(Some(back));
    }
    tokio::select! {
        () = tokio::time::sleep_until(deadline) => {}
        _ = shutdown.wait_for(|s| *s) => {
            imap.logout().await;
            return Ok(None);
        }
    }
    imap.noop().await?;
    Ok(Some(imap))
}

/// `d` ± 20%, so many clients cut off together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    d.mul_f64(factor)
}

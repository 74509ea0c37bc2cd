//! Sending a checked batch over one session: each message journaled before the next is accepted,
//! with the slow parts overlapped where that changes nothing a crash could see:
//!
//! - the previous message's journal fsync runs while the next message's envelope (MAIL, RCPT,
//!   DATA) is out; the next message's content goes only after the fsync is done, so the server
//!   cannot accept a message while the one before it is not yet journaled on disk;
//! - the next message is rendered and built while the server is storing this one (not with
//!   `--rate`, where it would be dated early).

use std::time::Duration;

use anyhow::{Context, Result};
use lettre::Message;

use super::Prepared;
use crate::clock::Clock;
use crate::config::Account;
use crate::error::ServerError;
use crate::journal::{self, Journal, Outcome, Syncing};
use crate::oauth::{TokenSource, TokenStore};
use crate::smtp::wire::Reply;
use crate::smtp::Session;

/// Attempts per message when the server answers 4xx or the connection drops.
const MAX_ATTEMPTS: u32 = 3;
/// First wait between attempts; doubles each time (1 s, then 2 s).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The outcome of a batch.
#[derive(Debug, Default)]
pub struct Summary {
    /// Accepted by the server in this run.
    pub sent: usize,
    /// Skipped because the journal has them (sent or rejected before).
    pub already_done: usize,
    /// Refused permanently in this run (row, reply).
    pub rejected: Vec<(String, String)>,
    /// SMTP sessions opened (logins).
    pub sessions: usize,
}

/// Batch settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Pause between messages (`--rate N/min`).
    pub interval: Option<Duration>,
}

/// Sends `messages` (with their count) in order over one session (reconnecting when its token
/// nears expiry or the connection fails), skipping and recording through `journal`. `progress` is
/// called after each message with (done, total).
///
/// # Errors
/// Login failures (as [`Session::open`]), a journal write failure, or [`ServerError::Transient`]
/// after `MAX_ATTEMPTS` for one message; everything before it is journaled (on disk) when this
/// returns, so a rerun resumes.
pub async fn run_batch<S: TokenStore>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    clock: &dyn Clock,
    journal: &mut Journal,
    messages: (impl Iterator<Item = Result<Prepared>>, usize),
    options: BatchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Summary> {
    let (rows, total) = messages;
    let mut source = Source {
        rows,
        taken: 0,
        total,
        progress,
    };
    let mut sender = Sender {
        account,
        tokens,
        clock,
        journal,
        session: None,
        syncing: None,
        ahead: None,
        look_ahead: options.interval.is_none(),
        summary: Summary::default(),
    };
    let result = sender.all(&mut source, options).await;
    // Whatever ended the batch, the last journal line is on disk before it returns.
    let synced = sender.settle().await;
    sender.quit().await;
    result.and(synced)?;
    Ok(sender.summary)
}

/// The messages still to come, and how far along they are.
struct Source<'p, I> {
    rows: I,
    taken: usize,
    total: usize,
    progress: &'p mut dyn FnMut(usize, usize),
}

/// A message built and ready to go.
struct Ready {
    prepared: Prepared,
    message: Message,
    bytes: Vec<u8>,
    /// Its place in the batch, for progress.
    index: usize,
}

impl Ready {
    /// Builds `prepared` (dated now).
    fn build(prepared: Prepared, index: usize) -> Result<Ready> {
        let message = prepared
            .build()
            .with_context(|| format!("{}: the message could not be built again", prepared.label))?;
        let bytes = message.formatted();
        Ok(Ready {
            prepared,
            message,
            bytes,
            index,
        })
    }
}

impl<I: Iterator<Item = Result<Prepared>>> Source<'_, I> {
    /// The next row the journal does not hold, with its place; the skipped ones counted.
    fn next_prepared(
        &mut self,
        journal: &Journal,
        summary: &mut Summary,
    ) -> Result<Option<(Prepared, usize)>> {
        for prepared in self.rows.by_ref() {
            let prepared = prepared?;
            self.taken += 1;
            if journal.contains(&prepared.key) {
                summary.already_done += 1;
                (self.progress)(self.taken, self.total);
                continue;
            }
            return Ok(Some((prepared, self.taken)));
        }
        Ok(None)
    }

    /// The next message to send, built.
    fn next_ready(&mut self, journal: &Journal, summary: &mut Summary) -> Result<Option<Ready>> {
        match self.next_prepared(journal, summary)? {
            Some((prepared, index)) => Ready::build(prepared, index).map(Some),
            None => Ok(None),
        }
    }
}

/// A batch in flight: where it sends, where it records, the session it reuses and its counts.
struct Sender<'b, 't, S: TokenStore> {
    account: &'b Account,
    tokens: &'b TokenSource<'t, S>,
    clock: &'b dyn Clock,
    journal: &'b mut Journal,
    session: Option<Session>,
    /// The last journal line's fsync, still running.
    syncing: Option<Syncing>,
    /// The next message, built while the server stored the current one.
    ahead: Option<Result<Option<Ready>>>,
    look_ahead: bool,
    summary: Summary,
}

impl<S: TokenStore> Sender<'_, '_, S> {
    /// Sends every message, skipping what the journal holds.
    async fn all<I: Iterator<Item = Result<Prepared>>>(
        &mut self,
        source: &mut Source<'_, I>,
        options: BatchOptions,
    ) -> Result<()> {
        loop {
            let ready = match self.ahead.take() {
                Some(next) => next?,
                None => {
                    let Some((prepared, index)) =
                        source.next_prepared(self.journal, &mut self.summary)?
                    else {
                        return Ok(());
                    };
                    // Paced: wait, then build (the message is dated when it goes out).
                    if let (Some(pause), true) = (options.interval, self.summary.sent > 0) {
                        tokio::time::sleep(pause).await;
                    }
                    Some(Ready::build(prepared, index)?)
                }
            };
            let Some(ready) = ready else {
                return Ok(());
            };
            self.send(&ready, source).await?;
            (source.progress)(ready.index, source.total);
        }
    }

    /// Waits for the last journal line to be on disk.
    async fn settle(&mut self) -> Result<()> {
        wait(self.syncing.take()).await
    }

    /// Sends one message, retrying transient failures, and journals the outcome.
    async fn send<I: Iterator<Item = Result<Prepared>>>(
        &mut self,
        ready: &Ready,
        source: &mut Source<'_, I>,
    ) -> Result<()> {
        let p = &ready.prepared;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let (outcome, reply) = match self.attempt(ready, source).await? {
                Ok(reply) => (Outcome::Sent, reply.text()),
                Err(ServerError::Failed { reason, .. }) => {
                    // A refusal after DATA was accepted closes the connection; others reset it.
                    if !self.session.as_ref().is_some_and(Session::is_usable) {
                        self.session = None;
                    }
                    (Outcome::Rejected, reason)
                }
                Err(e) if attempt == MAX_ATTEMPTS => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(row = %p.label, attempt, error = %e, "temporary failure; retrying");
                    self.session = None;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
            };
            let message_id = ready.message.headers().get_raw("Message-ID");
            self.syncing = Some(self.journal.append(&journal::Entry {
                key: p.key.clone(),
                row: p.label.clone(),
                message_id: message_id.unwrap_or_default().to_string(),
                at: self.clock.now(),
                outcome,
                reply: reply.clone(),
            })?);
            match outcome {
                Outcome::Sent => self.summary.sent += 1,
                Outcome::Rejected => self.summary.rejected.push((p.label.clone(), reply)),
            }
            return Ok(());
        }
        Ok(())
    }

    /// One attempt: the envelope goes out while the previous message's journal line is synced,
    /// the content only once that line is on disk (else the connection is dropped and the server
    /// keeps nothing); while the server stores it, the next message is built.
    async fn attempt<I: Iterator<Item = Result<Prepared>>>(
        &mut self,
        ready: &Ready,
        source: &mut Source<'_, I>,
    ) -> Result<Result<Reply, ServerError>> {
        let settle = wait(self.syncing.take());
        if let Err(e) = self.open().await {
            settle.await?;
            return Err(e);
        }
        let session = self
            .session
            .as_mut()
            .context("internal: no SMTP session after opening one")?;
        let envelope = ready.message.envelope();
        let (synced, sent) = tokio::join!(settle, session.envelope(envelope, &ready.bytes));
        if let Err(e) = synced {
            session.abandon();
            self.session = None;
            return Err(e);
        }
        if let Err(e) = sent {
            return Ok(Err(e));
        }
        if let Err(e) = session.data_sent(&ready.bytes).await {
            return Ok(Err(e));
        }
        if self.look_ahead && self.ahead.is_none() {
            self.ahead = Some(source.next_ready(self.journal, &mut self.summary));
        }
        Ok(session.data_reply().await)
    }

    /// Ends the session, if one is open.
    async fn quit(&mut self) {
        if let Some(s) = self.session.take() {
            s.quit().await;
        }
    }

    /// Opens the session, reconnecting first when its token nears expiry or it was dropped.
    async fn open(&mut self) -> Result<()> {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.token_expiring(self.clock.now()))
        {
            tracing::info!(account = %self.account.name, "token nearly expired; reconnecting with a fresh one");
            if let Some(old) = self.session.take() {
                old.quit().await;
            }
        }
        if self.session.is_none() {
            self.session = Some(Session::open(self.account, self.tokens).await?);
            self.summary.sessions += 1;
        }
        Ok(())
    }
}

/// Waits for a journal line's fsync, if one is running.
async fn wait(syncing: Option<Syncing>) -> Result<()> {
    match syncing {
        Some(s) => s.wait().await,
        None => Ok(()),
    }
}

//! `mailpilot queue`: what waits in the outbox, and what to do with it.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::exit::Exit;
use crate::oauth::TokenSource;
use crate::outbox::{Drain, Outbox, Queued, Sessions, Status};
use crate::output::JSON_SCHEMA_VERSION;

/// The outbox (what `sendmail` and the relay queued): list, deliver now, show, retry a failed
/// message, drop one.
#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// List queued and failed messages (id, age, account, recipients, attempts, last error)
    List,
    /// Deliver every queued message now (one SMTP session per account)
    Flush,
    /// Print a message as it is queued
    Show {
        /// Message id
        id: String,
    },
    /// Queue a failed message again
    Retry {
        /// Message id
        id: String,
    },
    /// Delete a message from the outbox
    Drop {
        /// Message id
        id: String,
    },
}

#[derive(Serialize)]
struct ListJson<'a> {
    version: u32,
    messages: &'a [Queued],
}

impl QueueCommand {
    /// Runs the command.
    ///
    /// # Errors
    /// An unknown id, an unreadable outbox; `flush` as its worst delivery.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let outbox = ctx.outbox()?;
        match self {
            QueueCommand::List => list(ctx, &outbox).await,
            QueueCommand::Flush => flush(ctx, &outbox).await,
            QueueCommand::Show { id } => {
                let (_, message) = outbox.load(&id).await?;
                ctx.out.data(&String::from_utf8_lossy(&message))?;
                Ok(Exit::Success)
            }
            QueueCommand::Retry { id } => {
                outbox.retry(&id, ctx.clock.now()).await?;
                ctx.out.info(&format!("message {id} is queued again"));
                Ok(Exit::Success)
            }
            QueueCommand::Drop { id } => {
                outbox.drop_message(&id).await?;
                ctx.out.info(&format!("message {id} dropped"));
                Ok(Exit::Success)
            }
        }
    }
}

async fn list(ctx: &Ctx, outbox: &Outbox) -> Result<Exit> {
    let messages = outbox.list().await?;
    if ctx.out.is_json() {
        ctx.out.json(&ListJson {
            version: JSON_SCHEMA_VERSION,
            messages: &messages,
        })?;
        return Ok(Exit::Success);
    }
    let now = ctx.clock.now();
    for q in &messages {
        let age = humantime::format_duration(std::time::Duration::from_secs(
            now.saturating_sub(q.head.queued_at),
        ));
        let status = match q.status {
            Status::Queued => "queued",
            Status::Failed => "FAILED",
        };
        let error = q
            .attempts
            .last_error
            .as_deref()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default();
        ctx.out.data(&format!(
            "{}  {status}  age {age}  account {}  from {}  to {}  attempts {}{error}",
            q.id,
            q.head.account,
            q.head.from,
            q.head.to.join(", "),
            q.attempts.attempts
        ))?;
    }
    if messages.is_empty() {
        ctx.out.info("the outbox is empty");
    }
    Ok(Exit::Success)
}

async fn flush(ctx: &Ctx, outbox: &Outbox) -> Result<Exit> {
    let config = ctx.config()?;
    let mut sessions = Sessions::default();
    let exit = drain(ctx, &config, outbox, true, &mut sessions).await;
    sessions.close().await;
    exit
}

/// Delivers what is queued, account by account (one session each, kept in `sessions` for the
/// next run): everything with `force`
/// (`queue flush`), else only what is due (the daemon). Reports what happened; returns the worst
/// outcome (75 while something waits, 77 when an account needs a person, 1 when something failed).
///
/// # Errors
/// The outbox cannot be read or written.
pub async fn drain(
    ctx: &Ctx,
    config: &crate::config::Config,
    outbox: &Outbox,
    force: bool,
    sessions: &mut Sessions,
) -> Result<Exit> {
    let store = ctx.store()?;
    let mut worst = Exit::Success;
    let plan = Drain {
        now: ctx.clock.now(),
        force,
        max_age: config.sendmail.max_age.as_secs(),
    };
    let due = outbox.due_by_account(plan).await?;
    if force && due.is_empty() {
        ctx.out.info("nothing is queued");
    }
    for (name, ids) in due {
        let account = match config.account(&name) {
            Ok(a) => a,
            Err(_) if !force => continue,
            Err(e) => {
                ctx.out.warn(&format!(
                    "{} queued message(s) for account \"{name}\", which is not configured: {}",
                    ids.len(),
                    crate::error::error_text(e.as_ref())
                ));
                worst = Exit::worst(worst, Exit::Failure);
                continue;
            }
        };
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let done = outbox
            .deliver(account, &tokens, &ids, plan, sessions)
            .await?;
        if force || !done.sent.is_empty() || !done.failed.is_empty() || !done.deferred.is_empty() {
            ctx.out.info(&format!(
                "outbox, account \"{name}\": {} sent, {} failed, {} still queued",
                done.sent.len(),
                done.failed.len(),
                done.deferred.len()
            ));
        }
        for (id, reason) in &done.failed {
            ctx.out.warn(&format!("{id}: refused for good: {reason}"));
        }
        if let Some(e) = &done.stopped {
            ctx.out.warn(&format!(
                "account \"{name}\": {}",
                crate::error::error_text(e.as_ref())
            ));
            worst = Exit::worst(worst, crate::exit::classify(e));
        } else if !done.deferred.is_empty() {
            worst = Exit::worst(worst, Exit::Transient);
        }
        if !done.failed.is_empty() {
            worst = Exit::worst(worst, Exit::Failure);
        }
    }
    Ok(worst)
}

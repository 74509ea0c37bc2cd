//! `mailpilot sendmail` (also the binary invoked as `sendmail`): takes a message on stdin the way
//! `/usr/sbin/sendmail` does, puts it in the outbox, and delivers it at once if it can.
//!
//! Exit 0 means the message is safe: delivered, or queued after a temporary failure (network, 4xx,
//! token endpoint down, or an account waiting for a person to sign in again). A permanent refusal
//! moves it to `outbox/failed/` and exits 1.

use std::io::Read;

use anyhow::{Context, Result};

use super::Ctx;
use crate::compose::submission::{self, Submission};
use crate::error::UsageError;
use crate::exit::{classify, Exit};
use crate::oauth::TokenSource;
use crate::outbox::{Drain, Head, MailDrop, Outbox, Sessions, MAX_MESSAGE_BYTES};

/// Reads a message on stdin like /usr/sbin/sendmail and sends it through the `[sendmail]` account,
/// queueing it when it cannot go now. Takes the options cron, mail(1), PHP and others pass (-t, -f,
/// -F, -i, -oi, -oem, -odi, -B8BITMIME…); recipients are arguments or, with -t, the headers.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// sendmail options and recipients, as /usr/sbin/sendmail takes them
    #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
    pub args: Vec<String>,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// A bad command line or configuration, an unreadable message, or an outbox that cannot be
    /// written: then the message was not accepted.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let args = submission::parse_args(&self.args)?;
        if !args.ignored.is_empty() {
            tracing::debug!(ignored = ?args.ignored, "sendmail options accepted and ignored");
        }
        let config = ctx.config()?;
        let account = match &config.sendmail.account {
            Some(name) => config.account(name)?,
            None => ctx.pick_account(&config, None).map_err(|_| {
                UsageError(
                    "several accounts are configured: choose the one sendmail uses with `account = \"NAME\"` under [sendmail]".into(),
                )
            })?,
        };
        let raw = read_stdin()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let from = account.from.as_deref().unwrap_or(&account.email);
        let unique = format!("{}.mailpilot", crate::clock::unique_stamp());
        let sub_ctx = submission::Context {
            settings: &config.sendmail,
            account_from: submission::address_of(from),
            date: chrono::Local::now().to_rfc2822(),
            unique,
        };
        let Submission {
            from,
            recipients,
            message,
        } = match submission::prepare(&raw, &args, &sub_ctx) {
            Ok(s) => s,
            Err(e) => return keep_unsendable(ctx, account, &raw, e, now).await,
        };
        let head = Head {
            version: 1,
            account: account.name.clone(),
            from,
            to: recipients,
            queued_at: now.as_secs(),
        };
        if let Some(drop) = config
            .sendmail
            .drop_dir
            .as_deref()
            .map(MailDrop::new)
            .filter(MailDrop::is_for_this_user)
        {
            let name = drop.leave(&head, &message)?;
            ctx.out.info(&format!(
                "left for the mailpilot daemon as {name} (the service user's outbox delivers it)"
            ));
            return Ok(Exit::Success);
        }
        let outbox = ctx.outbox()?;
        let id = outbox.put(head, message).await?;
        tracing::info!(id = %id, "queued");
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let drain = Drain {
            now: ctx.clock.now(),
            force: true,
            max_age: config.sendmail.max_age.as_secs(),
        };
        let mut sessions = Sessions::default();
        let done = outbox
            .deliver(
                account,
                &tokens,
                std::slice::from_ref(&id),
                drain,
                &mut sessions,
            )
            .await;
        sessions.close().await;
        let done = done?;
        report(ctx, &outbox, account, &id, &done)
    }
}

/// A message that cannot be sent as given (no recipient, a local name without an alias) is kept
/// in `outbox/failed/` — cron cannot hand it over twice — and the problem reported (exit 2).
async fn keep_unsendable(
    ctx: &Ctx,
    account: &crate::config::Account,
    raw: &[u8],
    problem: UsageError,
    now: std::time::Duration,
) -> Result<Exit> {
    let head = Head {
        version: 1,
        account: account.name.clone(),
        from: String::new(),
        to: Vec::new(),
        queued_at: now.as_secs(),
    };
    let kept = match ctx.outbox() {
        Ok(outbox) => outbox.put_failed(&head, raw, &problem.0).await,
        Err(e) => Err(e),
    };
    match kept {
        Ok(id) => Err(UsageError(format!(
            "{}; the message is kept as {id} (`mailpilot queue show {id}`)",
            problem.0
        ))
        .into()),
        Err(e) => Err(anyhow::Error::new(problem).context(format!(
            "the message could not be kept either: {}",
            crate::error::error_text(e.as_ref())
        ))),
    }
}

/// The message on stdin, at most [`MAX_MESSAGE_BYTES`].
fn read_stdin() -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut raw)
        .context("failed to read the message from stdin")?;
    if raw.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(UsageError(format!(
            "the message is over {} MiB",
            MAX_MESSAGE_BYTES / 1024 / 1024
        ))
        .into());
    }
    Ok(raw)
}

/// What became of the message: sent (silent), queued (a warning naming what delivers it), or
/// refused for good (an error).
fn report(
    ctx: &Ctx,
    outbox: &Outbox,
    account: &crate::config::Account,
    id: &str,
    done: &crate::outbox::Delivered,
) -> Result<Exit> {
    if let Some((_, reason)) = done.failed.first() {
        ctx.out.warn(&format!(
            "the server refused the message for good; it is kept with the failed messages in {} (see `mailpilot queue show {id}`, `mailpilot queue retry {id}`)",
            outbox.describe()
        ));
        return Err(anyhow::anyhow!("{reason}"));
    }
    if let Some((_, reason)) = done.deferred.first() {
        let hint = match done.stopped.as_ref().map(classify) {
            Some(Exit::NeedsAuthorization) => format!(
                "; it goes out once the account is signed in again (`mailpilot auth login {}`)",
                account.name
            ),
            _ => "; `mailpilot queue flush` delivers it".to_string(),
        };
        ctx.out
            .warn(&format!("queued as {id}, not sent yet: {reason}{hint}"));
    } else if done.sent.is_empty() {
        ctx.out.info(&format!(
            "queued as {id}; another mailpilot process is delivering it"
        ));
    }
    Ok(Exit::Success)
}

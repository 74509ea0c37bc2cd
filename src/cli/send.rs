//! `mailpilot send`: one message, now.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Ctx;
use crate::compose::{parse_header, Draft};
use crate::config::{Account, Config};
use crate::exit::{Exit, UsageError};
use crate::oauth::TokenSource;
use crate::output::JSON_SCHEMA_VERSION;
use crate::smtp;

/// Sends one message through the account's SMTP server (XOAUTH2/OAUTHBEARER with a fresh token).
/// Exit 0 only when the server accepted every recipient.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account to send from [default: the only configured account]
    #[arg(long, short)]
    account: Option<String>,
    /// From address [default: the account's email]
    #[arg(long)]
    from: Option<String>,
    /// Recipient (repeatable); `Name <addr>` or `addr`
    #[arg(long, value_name = "ADDR")]
    to: Vec<String>,
    /// Cc recipient (repeatable)
    #[arg(long, value_name = "ADDR")]
    cc: Vec<String>,
    /// Bcc recipient (repeatable; never shown in the headers)
    #[arg(long, value_name = "ADDR")]
    bcc: Vec<String>,
    /// Subject
    #[arg(long, short, default_value = "")]
    subject: String,
    /// Plain-text body [default: read from stdin unless --html-file is given]
    #[arg(long, conflicts_with = "text_file")]
    text: Option<String>,
    /// Plain-text body from a file
    #[arg(long, value_name = "FILE")]
    text_file: Option<PathBuf>,
    /// HTML body from a file (sent as an alternative to the text)
    #[arg(long, value_name = "FILE")]
    html_file: Option<PathBuf>,
    /// Attach a file (repeatable); its MIME type is guessed from the extension
    #[arg(long, value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// Extra header, "Name: value" (repeatable)
    #[arg(long, value_name = "HEADER")]
    header: Vec<String>,
    /// Print the message (RFC 5322) to stdout instead of sending it
    #[arg(long)]
    dry_run: bool,
}

#[derive(Serialize)]
struct SentJson<'a> {
    version: u32,
    account: &'a str,
    message_id: Option<String>,
    recipients: usize,
    reply: String,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Bad input (exit 2), authorization (77), transient server or network trouble (75),
    /// permanent refusal (1).
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        // A dry run with an explicit --from needs no configuration at all.
        let config = match (self.dry_run, &self.from) {
            (true, Some(_)) => None,
            _ => Some(ctx.config()?),
        };
        let account = config.as_ref().map(|c| self.account(c)).transpose()?;
        let draft = self.draft(account)?;
        let message = draft.build()?;
        if self.dry_run {
            let text = String::from_utf8_lossy(&message.formatted()).into_owned();
            ctx.out.data(text.trim_end_matches("\r\n"))?;
            return Ok(Exit::Success);
        }
        let account = account.context("internal: sending without an account")?;
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let reply = smtp::send_one(account, &tokens, &message).await?;
        let message_id = message.headers().get_raw("Message-ID").map(str::to_string);
        let recipients = message.envelope().to().len();
        let reply_text = reply.message().collect::<Vec<_>>().join(" ");
        if ctx.out.is_json() {
            ctx.out.json(&SentJson {
                version: JSON_SCHEMA_VERSION,
                account: &account.name,
                message_id,
                recipients,
                reply: format!("{} {reply_text}", reply.code()),
            })?;
        } else {
            ctx.out.info(&format!(
                "sent to {recipients} recipient{} via account \"{}\" ({} {reply_text})",
                if recipients == 1 { "" } else { "s" },
                account.name,
                reply.code()
            ));
        }
        Ok(Exit::Success)
    }

    fn account<'c>(&self, config: &'c Config) -> Result<&'c Account> {
        match &self.account {
            Some(name) => config.account(name),
            None if config.accounts.len() == 1 => {
                Ok(config.accounts.values().next().context("one account")?)
            }
            None => Err(UsageError(format!(
                "several accounts are configured; choose one with --account ({})",
                config
                    .accounts
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    fn draft(&self, account: Option<&Account>) -> Result<Draft> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read_to_string(p)
                .with_context(|| format!("failed to read {what} {}", p.display()))
        };
        let html = self
            .html_file
            .as_ref()
            .map(|p| read(p, "--html-file"))
            .transpose()?;
        let text = match (&self.text, &self.text_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(p)) => Some(read(p, "--text-file")?),
            (None, None) if html.is_some() => None,
            (None, None) => Some(read_stdin()?),
        };
        Ok(Draft {
            from: match (&self.from, account) {
                (Some(f), _) => f.clone(),
                (None, Some(a)) => a.email.clone(),
                (None, None) => String::new(),
            },
            to: self.to.clone(),
            cc: self.cc.clone(),
            bcc: self.bcc.clone(),
            subject: self.subject.clone(),
            text,
            html,
            attachments: self.attach.clone(),
            headers: self
                .header
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_>>()?,
        })
    }
}

fn read_stdin() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(UsageError(
            "no message body: give --text, --text-file or --html-file, or pipe the text on stdin"
                .into(),
        )
        .into());
    }
    let mut text = String::new();
    stdin
        .lock()
        .read_to_string(&mut text)
        .context("failed to read the message body from stdin")?;
    Ok(text)
}

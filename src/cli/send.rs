//! `mailpilot send`: one message, one templated message, or a mail merge (`--each`).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use super::Ctx;
use crate::compose::template::Templates;
use crate::compose::{data, parse_header, Draft};
use crate::config::{Account, Config};
use crate::error::UsageError;
use crate::exit::Exit;
use crate::journal::Journal;
use crate::oauth::TokenSource;
use crate::output::JSON_SCHEMA_VERSION;
use crate::send::{self, BatchOptions, Merge, Prepared};
use crate::smtp;

/// Sends one message, one message rendered from a template, or one message per data row (mail
/// merge) through the account's SMTP server. Exit 0 only when the server accepted every message
/// and recipient.
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
    #[arg(long, short, conflicts_with = "template")]
    subject: Option<String>,
    /// Plain-text body [default: read from stdin unless --html-file or --template is given]
    #[arg(long, conflicts_with_all = ["text_file", "template"])]
    text: Option<String>,
    /// Plain-text body from a file
    #[arg(long, value_name = "FILE", conflicts_with = "template")]
    text_file: Option<PathBuf>,
    /// HTML body from a file (sent as an alternative to the text)
    #[arg(long, value_name = "FILE", conflicts_with = "template")]
    html_file: Option<PathBuf>,
    /// Render subject, text and HTML from template NAME (NAME.j2 in the templates directory)
    #[arg(long, short = 't', value_name = "NAME")]
    template: Option<String>,
    /// Template variable (repeatable), KEY=VALUE
    #[arg(long, value_name = "KEY=VALUE", requires = "template")]
    var: Vec<String>,
    /// Template variables from a JSON object file
    #[arg(long, value_name = "FILE.json", requires = "template")]
    data: Option<PathBuf>,
    /// Mail merge: one message per row of a CSV, JSON or JSON Lines file (columns `to`, `cc`,
    /// `bcc`, `attachments`, `id` plus the template's variables)
    #[arg(long, value_name = "FILE", requires = "template")]
    each: Option<PathBuf>,
    /// With --each: send the valid rows even if some are invalid (those are listed and skipped)
    #[arg(long, requires = "each")]
    skip_invalid: bool,
    /// With --each: at most this many messages, e.g. 30/min, 2/s, 500/h
    #[arg(long, value_name = "N/UNIT", requires = "each", value_parser = parse_rate)]
    rate: Option<Duration>,
    /// With --each: the journal name [default: derived from account, template and data file];
    /// use a new name (e.g. with the date) to send the same rows again
    #[arg(long, value_name = "NAME", requires = "each", value_parser = parse_batch)]
    batch: Option<String>,
    /// Directory that data rows (`attachments`) may attach files from, instead of the data file's;
    /// rows' relative paths are resolved against it
    #[arg(long, value_name = "DIR")]
    attachments_from: Option<PathBuf>,
    /// Templates directory [default: templates_dir from the config, or templates/ next to it]
    #[arg(long, value_name = "DIR")]
    templates_dir: Option<PathBuf>,
    /// Attach a file (repeatable); its MIME type is guessed from the extension
    #[arg(long, value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// Extra header, "Name: value" (repeatable)
    #[arg(long, value_name = "HEADER")]
    header: Vec<String>,
    /// Print the message(s) (RFC 5322) to stdout instead of sending
    #[arg(long)]
    dry_run: bool,
}

/// `--rate`: the pause between messages.
fn parse_rate(text: &str) -> Result<Duration, String> {
    let (n, unit) = text.split_once('/').ok_or("expected N/UNIT, e.g. 30/min")?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a number"))?;
    let per = match unit.trim() {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" | "hour" => 3600,
        other => return Err(format!("unknown unit {other:?} (use s, min or h)")),
    };
    if n == 0 {
        return Err("the rate must be at least 1".into());
    }
    Ok(Duration::from_secs(per) / n)
}

fn parse_batch(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && text.len() <= 64
    {
        Ok(text.to_string())
    } else {
        Err(
            "use letters, digits, '-', '_' and '.' (it names a file and goes into Message-IDs)"
                .into(),
        )
    }
}

#[derive(Serialize)]
struct SentJson<'a> {
    version: u32,
    account: &'a str,
    message_id: Option<String>,
    recipients: usize,
    reply: String,
}

#[derive(Serialize)]
struct MergeJson<'a> {
    version: u32,
    account: &'a str,
    batch: &'a str,
    journal: String,
    rows: usize,
    sent: usize,
    already_sent: usize,
    invalid: Vec<ProblemJson>,
    rejected: Vec<ProblemJson>,
    sessions: usize,
}

#[derive(Serialize)]
struct ProblemJson {
    row: String,
    problem: String,
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
        let account = config
            .as_ref()
            .map(|c| ctx.pick_account(c, self.account.as_deref()))
            .transpose()?;
        let base = self.base_draft(account)?;
        if let Some(each) = &self.each {
            let config_dir = config.as_ref().map(|c| c.templates_dir.clone());
            return self.merge(ctx, account, &base, each, config_dir).await;
        }
        let message = match &self.template {
            Some(name) => self.templated(name, &base, config.as_ref())?,
            None => self.plain_body(base)?.build()?,
        };
        if self.dry_run {
            return print_message(ctx, &message);
        }
        let account = account.context("internal: sending without an account")?;
        self.send_one(ctx, account, &message).await
    }

    /// One message from a template: `--data`/`--var` are its variables, and may also give `to`,
    /// `cc`, `bcc` and `attachments` as a merge row would.
    fn templated(
        &self,
        name: &str,
        base: &Draft,
        config: Option<&Config>,
    ) -> Result<lettre::Message> {
        let templates =
            Templates::new(&self.templates_dir(config.map(|c| c.templates_dir.clone())));
        let globals = self.globals()?;
        let data_file = self.data.clone().unwrap_or_else(|| PathBuf::from("--var"));
        let merge = Merge {
            template: name,
            globals: &globals,
            base,
            data_file: &data_file,
            attachments_from: self.attachments_from.as_deref(),
            batch: None,
        };
        let row = data::Row {
            number: 1,
            vars: Map::new(),
        };
        match send::prepare(&templates, &merge, &row) {
            Ok(p) => p.build(),
            Err(e) => Err(UsageError(crate::error::error_text(e.as_ref())).into()),
        }
    }

    async fn send_one(
        &self,
        ctx: &Ctx,
        account: &Account,
        message: &lettre::Message,
    ) -> Result<Exit> {
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let reply = smtp::send_one(account, &tokens, message).await?;
        let message_id = message.headers().get_raw("Message-ID").map(str::to_string);
        let recipients = message.envelope().to().len();
        let reply = reply.text();
        if ctx.out.is_json() {
            ctx.out.json(&SentJson {
                version: JSON_SCHEMA_VERSION,
                account: &account.name,
                message_id,
                recipients,
                reply,
            })?;
        } else {
            ctx.out.info(&format!(
                "sent to {recipients} recipient{} via account \"{}\" ({reply})",
                if recipients == 1 { "" } else { "s" },
                account.name,
            ));
        }
        Ok(Exit::Success)
    }

    async fn merge(
        &self,
        ctx: &Ctx,
        account: Option<&Account>,
        base: &Draft,
        each: &Path,
        config_templates: Option<PathBuf>,
    ) -> Result<Exit> {
        let template = self
            .template
            .as_deref()
            .context("internal: --each without --template")?;
        let templates = Templates::new(&self.templates_dir(config_templates));
        crate::compose::template::check_exists(templates.dir(), template)?;
        let text = data::load_text(each)?;
        let globals = self.globals()?;
        let batch = match (&self.batch, account) {
            (Some(b), _) => b.clone(),
            (None, Some(a)) => send::batch_name(&a.name, template, each),
            (None, None) => send::batch_name("", template, each),
        };
        let merge = Merge {
            template,
            globals: &globals,
            base,
            data_file: each,
            attachments_from: self.attachments_from.as_deref(),
            batch: Some(&batch),
        };
        // Two passes over the rows: every row checked before the first send, then each rendered
        // and built just before it is sent (so its Date is the send time and memory stays flat).
        let checked = send::check(&templates, &merge, data::rows(&text, each)?)?;
        for bad in &checked.invalid {
            ctx.out.warn(&format!("{}: {}", bad.label, bad.problem));
        }
        if !checked.invalid.is_empty() && !self.skip_invalid {
            return Err(UsageError(format!(
                "{} of {} rows are invalid; nothing was sent (fix them, or pass --skip-invalid to send the {} valid ones)",
                checked.invalid.len(),
                checked.rows,
                checked.valid
            ))
            .into());
        }
        let messages = send::messages(&templates, &merge, data::rows(&text, each)?, &checked);
        if self.dry_run {
            for p in messages {
                let p = p?;
                ctx.out.data(&format!("--- {} (key {})", p.label, p.key))?;
                print_message(ctx, &p.build()?)?;
            }
            return Ok(Exit::Success);
        }
        let account = account.context("internal: merge without an account")?;
        self.send_merge(ctx, account, &batch, messages, &checked)
            .await
    }

    async fn send_merge(
        &self,
        ctx: &Ctx,
        account: &Account,
        batch: &str,
        messages: impl Iterator<Item = Result<Prepared>>,
        checked: &send::Checked,
    ) -> Result<Exit> {
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let mut journal = match ctx.state_home()? {
            crate::db::StateHome::Files(dir) => Journal::open(&send::journal_dir(&dir), batch)?,
            crate::db::StateHome::Postgres(db) => Journal::open_db(db, batch).await?,
        };
        let options = BatchOptions {
            interval: self.rate,
        };
        let mut progress = |done, total| ctx.out.progress("sending", done, total);
        let result = send::run_batch(
            account,
            &tokens,
            ctx.clock.as_ref(),
            &mut journal,
            (messages, checked.valid),
            options,
            &mut progress,
        )
        .await;
        ctx.out.progress_end();
        let summary = result.with_context(|| {
            format!(
                "batch {batch} stopped; what was sent is in {} and a rerun resumes after it",
                journal.describe()
            )
        })?;
        let problems = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(row, problem)| ProblemJson { row, problem })
                .collect()
        };
        if ctx.out.is_json() {
            ctx.out.json(&MergeJson {
                version: JSON_SCHEMA_VERSION,
                account: &account.name,
                batch,
                journal: journal.describe().to_string(),
                rows: checked.rows,
                sent: summary.sent,
                already_sent: summary.already_done,
                invalid: problems(
                    checked
                        .invalid
                        .iter()
                        .map(|i| (i.label.clone(), i.problem.clone()))
                        .collect(),
                ),
                rejected: problems(summary.rejected.clone()),
                sessions: summary.sessions,
            })?;
        }
        for (row, reply) in &summary.rejected {
            ctx.out
                .warn(&format!("{row}: refused by the server: {reply}"));
        }
        ctx.out.info(&format!(
            "batch {batch}: {} sent, {} already sent before (skipped), {} invalid, {} refused; journal {}",
            summary.sent,
            summary.already_done,
            checked.invalid.len(),
            summary.rejected.len(),
            journal.describe()
        ));
        Ok(
            if checked.invalid.is_empty() && summary.rejected.is_empty() {
                Exit::Success
            } else {
                Exit::Failure
            },
        )
    }

    fn templates_dir(&self, from_config: Option<PathBuf>) -> PathBuf {
        self.templates_dir
            .clone()
            .or(from_config)
            .unwrap_or_else(|| PathBuf::from("templates"))
    }

    /// `--data` then `--var` (a `--var` wins).
    fn globals(&self) -> Result<Map<String, Value>> {
        let mut vars = match &self.data {
            Some(path) => data::load_object(path)?,
            None => Map::new(),
        };
        for kv in &self.var {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(UsageError(format!("--var {kv:?}: expected KEY=VALUE")).into());
            };
            vars.insert(k.trim().to_string(), Value::String(v.to_string()));
        }
        Ok(vars)
    }

    /// Everything but the body: from, recipients, attachments, headers.
    fn base_draft(&self, account: Option<&Account>) -> Result<Draft> {
        Ok(Draft {
            from: match (&self.from, account) {
                (Some(f), _) => f.clone(),
                (None, Some(a)) => a.from.clone().unwrap_or_else(|| a.email.clone()),
                (None, None) => String::new(),
            },
            to: self.to.clone(),
            cc: self.cc.clone(),
            bcc: self.bcc.clone(),
            subject: self.subject.clone().unwrap_or_default(),
            attachments: self.attach.clone(),
            headers: self
                .header
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_>>()?,
            ..Draft::default()
        })
    }

    fn plain_body(&self, base: Draft) -> Result<Draft> {
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
        Ok(Draft { text, html, ..base })
    }
}

fn print_message(ctx: &Ctx, message: &lettre::Message) -> Result<Exit> {
    let text = String::from_utf8_lossy(&message.formatted()).into_owned();
    ctx.out.data(text.trim_end_matches("\r\n"))?;
    Ok(Exit::Success)
}

fn read_stdin() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(UsageError("no message body: give --text, --text-file, --html-file or --template, or pipe the text on stdin".into()).into());
    }
    let mut text = String::new();
    stdin
        .lock()
        .read_to_string(&mut text)
        .context("failed to read the message body from stdin")?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates become the pause between messages.
    #[test]
    fn rates() {
        assert_eq!(parse_rate("30/min"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_rate("4/s"), Ok(Duration::from_millis(250)));
        assert!(parse_rate("0/min").is_err());
        assert!(parse_rate("5/week").is_err());
    }
}

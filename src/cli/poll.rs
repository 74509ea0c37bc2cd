//! `mailpilot poll`: one pass over a mailbox, for cron.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Ctx;
use crate::exit::Exit;
use crate::oauth::TokenSource;
use crate::output::Output;
use crate::poll::{Actions, Handler, MessageJson, Notice, PollOptions, Poller, Sink, Start};

/// Hands each new message of a mailbox to a handler exactly once, in UID order, and remembers how
/// far it got (per account and mailbox). By default prints one JSON object per message.
///
/// The first poll of a mailbox needs a starting point: --since AGE, --from-now or --all.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Handle at most N messages in this run (the rest come next time)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

/// What `poll` and `watch` share: account, mailbox, start, handler, actions.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Account to read [default: the only configured account]
    #[arg(long, short)]
    account: Option<String>,
    /// Mailbox to read
    #[arg(long, short, default_value = "INBOX")]
    mailbox: String,
    /// Extra IMAP SEARCH criteria, e.g. 'UNSEEN' or 'FROM "alerts@example.com"'
    #[arg(long, value_name = "CRITERIA", value_parser = search_criteria)]
    search: Option<String>,
    /// First poll only: start with messages from the last AGE (e.g. 2d, 12h)
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration, conflicts_with_all = ["from_now", "all"])]
    since: Option<Duration>,
    /// First poll only: ignore existing messages, handle only new ones from now on
    #[arg(long, conflicts_with = "all")]
    from_now: bool,
    /// First poll only: handle every message in the mailbox
    #[arg(long)]
    all: bool,
    /// After a UIDVALIDITY change (mailbox recreated), handle every message again instead of
    /// continuing with new ones
    #[arg(long)]
    replay: bool,
    /// Try the quarantined messages (ones that could not be handled, e.g. over
    /// max_message_size) again before the new ones
    #[arg(long)]
    retry_quarantined: bool,
    /// Run CMD (via sh -c) per message: raw message on stdin, MAILPILOT_UID, MAILPILOT_FROM,
    /// MAILPILOT_SUBJECT, ... in the environment. A non-zero exit stops the poll before that
    /// message is checkpointed
    #[arg(long, value_name = "CMD", conflicts_with = "save")]
    exec: Option<String>,
    /// Write each message as DIR/<uidvalidity>-<uid>.eml
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// JSON output: include the HTML body
    #[arg(long)]
    html: bool,
    /// JSON output: write attachments into DIR
    #[arg(long, value_name = "DIR")]
    save_attachments: Option<PathBuf>,
    /// After handling: mark the message \Seen
    #[arg(long)]
    mark_seen: bool,
    /// After handling: add this flag or keyword (e.g. \Flagged, processed)
    #[arg(long, value_name = "FLAG", value_parser = flag)]
    flag: Option<String>,
    /// After handling: move the message to MAILBOX
    #[arg(long = "move", value_name = "MAILBOX", conflicts_with = "delete")]
    move_to: Option<String>,
    /// After handling: delete the message
    #[arg(long)]
    delete: bool,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// First poll without a start (exit 2), a busy mailbox (75), login and network failures,
    /// a failing --exec (1).
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = ctx.pick_account(&config, self.common.account.as_deref())?;
        let mut options = self.common.options()?;
        options.limit = self.limit;
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let home = ctx.state_home()?;
        let clock = ctx.clock.as_ref();
        let poller = Poller::new(account, &tokens, &home, &options, &ctx.out, clock);
        let summary = poller.once().await?;
        ctx.out.info(&format!(
            "{}: {} new message{} handled (checkpoint UID {})",
            options.mailbox,
            summary.handled,
            if summary.handled == 1 { "" } else { "s" },
            summary.last_uid
        ));
        quarantine_report(&options.mailbox, &summary.quarantined)?;
        Ok(Exit::Success)
    }
}

/// A run that quarantined messages fails (exit 1) after finishing, naming each once: the next run
/// goes on without them.
///
/// # Errors
/// When `quarantined` is not empty.
pub fn quarantine_report(mailbox: &str, quarantined: &[(u32, String)]) -> Result<()> {
    if quarantined.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = quarantined
        .iter()
        .map(|(uid, reason)| format!("UID {uid} ({reason})"))
        .collect();
    anyhow::bail!(
        "{} message{} of {mailbox} cannot be handled and {} quarantined: {}; they stay in the mailbox, later mail was handled, and `--retry-quarantined` tries them again",
        quarantined.len(),
        if quarantined.len() == 1 { "" } else { "s" },
        if quarantined.len() == 1 { "was" } else { "were" },
        list.join(", ")
    )
}

/// `--flag`: an IMAP flag or keyword, nothing that could become a second command.
fn flag(text: &str) -> Result<String, String> {
    crate::imap::check_flag(text).map(|()| text.to_string())
}

/// `--search`: criteria without control characters.
fn search_criteria(text: &str) -> Result<String, String> {
    crate::imap::check_search(text).map(|()| text.to_string())
}

/// The poll's JSON documents go to stdout, its notices to stderr as warnings.
impl Sink for Output {
    fn message(&self, message: &MessageJson<'_>) -> Result<()> {
        self.json(message)
    }

    fn notice(&self, notice: &Notice) {
        self.warn(&notice.to_string());
    }
}

impl Common {
    /// The account name given, if any.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The resolved poll settings (creating --save/--save-attachments directories).
    ///
    /// # Errors
    /// A directory cannot be created.
    pub fn options(&self) -> Result<PollOptions> {
        for dir in [&self.save, &self.save_attachments].into_iter().flatten() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create directory {}", dir.display()))?;
        }
        Ok(PollOptions {
            mailbox: self.mailbox.clone(),
            search: self.search.clone(),
            limit: None,
            start: match (self.since, self.from_now, self.all) {
                (Some(d), _, _) => Start::Since(d),
                (None, true, _) => Start::FromNow,
                (None, false, true) => Start::All,
                (None, false, false) => Start::Unset,
            },
            replay: self.replay,
            retry_quarantined: self.retry_quarantined,
            handler: match (&self.exec, &self.save) {
                (Some(cmd), _) => Handler::Exec(cmd.clone()),
                (None, Some(dir)) => Handler::Save(dir.clone()),
                (None, None) => Handler::Json {
                    html: self.html,
                    save_attachments: self.save_attachments.clone(),
                },
            },
            actions: Actions {
                mark_seen: self.mark_seen,
                flag: self.flag.clone(),
                move_to: self.move_to.clone(),
                delete: self.delete,
            },
        })
    }
}

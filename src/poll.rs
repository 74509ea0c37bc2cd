//! Checkpointed polling: each new message of a mailbox is handed to a handler once, in UID order,
//! and the checkpoint (`uidvalidity`, `last_uid`) advances — durably — after each handled message.
//! A crash re-delivers at most the message in hand and never skips one. A per-mailbox lock keeps
//! two overlapping runs from handling the same message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mail_parser::{MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::config::Account;
use crate::error::{Busy, UsageError};
use crate::imap::{Imap, Selected};
use crate::oauth::{TokenSource, TokenStore};
use crate::output::{Output, JSON_SCHEMA_VERSION};

/// How long a second poll of the same mailbox waits for the first before giving up (exit 75).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// The checkpoint file format.
const STATE_VERSION: u32 = 1;

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

/// The checkpoint of one account and mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    uidvalidity: u32,
    last_uid: u32,
    /// While a first `--since` poll has not completed a full pass: its window (IMAP date), so
    /// older messages are never handed over later by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

/// The state files of one account and mailbox: `poll/<account>/<mailbox>.json` and `.lock`.
struct StateFiles {
    json: PathBuf,
    lock: PathBuf,
}

impl StateFiles {
    fn new(state_dir: &Path, account: &str, mailbox: &str) -> Self {
        let dir = state_dir.join("poll").join(account);
        let name: String = mailbox
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Self {
            json: dir.join(format!("{name}.json")),
            lock: dir.join(format!("{name}.lock")),
        }
    }

    fn load(&self) -> Result<Option<Checkpoint>> {
        let bytes = match std::fs::read(&self.json) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to read poll state {}", self.json.display()))
            }
        };
        let cp: Checkpoint = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "poll state {} is corrupt; delete it to start over (see --since/--from-now)",
                self.json.display()
            )
        })?;
        if cp.version != STATE_VERSION {
            bail!(
                "poll state {} has format version {}, this mailpilot reads {STATE_VERSION}",
                self.json.display(),
                cp.version
            );
        }
        Ok(Some(cp))
    }

    fn save(&self, cp: &Checkpoint) -> Result<()> {
        let mut bytes = serde_json::to_vec(cp).context("failed to encode poll state")?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(&self.json, &bytes)
    }

    async fn lock(&self, mailbox: &str) -> Result<std::fs::File> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            if let Some(file) = crate::fsutil::try_lock(&self.lock)? {
                return Ok(file);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Busy(format!(
                    "another mailpilot process has been polling {mailbox} for over {}s; try again later",
                    LOCK_WAIT.as_secs()
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls once: handles every new message and advances the checkpoint after each.
///
/// # Errors
/// A first poll without a start choice ([`UsageError`]), a busy mailbox ([`Busy`]), login and
/// network failures, or a failing handler (the checkpoint stays before that message).
pub async fn poll_once<S: TokenStore>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    state_dir: &Path,
    options: &PollOptions,
    out: &Output,
    now: u64,
) -> Result<PollSummary> {
    let files = StateFiles::new(state_dir, &account.name, &options.mailbox);
    let _lock = files.lock(&options.mailbox).await?;
    require_start(&files, account, options)?;
    let mut imap = Imap::open(account, tokens).await?;
    let summary = select_and_pass(account, &mut imap, &files, options, out, now, &|| false).await?;
    imap.logout().await;
    Ok(summary)
}

/// The first poll of a mailbox must say where to start.
fn require_start(files: &StateFiles, account: &Account, options: &PollOptions) -> Result<()> {
    if files.load()?.is_none() && options.start == Start::Unset {
        return Err(UsageError(format!(
            "first poll of {} for account \"{}\": choose where to start with --since 2d, --from-now or --all",
            options.mailbox, account.name
        ))
        .into());
    }
    Ok(())
}

/// Selects the mailbox, settles the checkpoint (first run, UIDVALIDITY change) and runs a pass.
#[allow(
    clippy::too_many_arguments,
    reason = "one pass's context, passed explicitly"
)]
async fn select_and_pass(
    account: &Account,
    imap: &mut Imap,
    files: &StateFiles,
    options: &PollOptions,
    out: &Output,
    now: u64,
    stop: &dyn Fn() -> bool,
) -> Result<PollSummary> {
    let selected = imap.select(&options.mailbox).await?;
    let mut checkpoint = starting_point(files.load()?, selected, options, out, files, now)?;
    let windowed = checkpoint.since.is_some();
    let summary = pass(account, imap, files, &mut checkpoint, options, out, stop).await?;
    if windowed && summary.complete {
        // The window is done: what is older than it was passed over on purpose.
        checkpoint.since = None;
        checkpoint.last_uid = checkpoint.last_uid.max(selected.uidnext.saturating_sub(1));
        files.save(&checkpoint)?;
    }
    Ok(PollSummary {
        last_uid: checkpoint.last_uid,
        ..summary
    })
}

/// Handles every message after the checkpoint (only those in its SINCE window, if it has one),
/// checkpointing after each; `stop` is asked between messages.
async fn pass(
    account: &Account,
    imap: &mut Imap,
    files: &StateFiles,
    checkpoint: &mut Checkpoint,
    options: &PollOptions,
    out: &Output,
    stop: &dyn Fn() -> bool,
) -> Result<PollSummary> {
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
        handle(account, options, checkpoint.uidvalidity, uid, &raw, out)
            .await
            .with_context(|| {
                format!(
                    "stopped at UID {uid} of {}; the next poll starts with it",
                    options.mailbox
                )
            })?;
        apply_actions(imap, uid, &options.actions).await?;
        checkpoint.last_uid = uid;
        files.save(checkpoint)?;
        summary.handled += 1;
        summary.last_uid = uid;
    }
    Ok(summary)
}

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
/// First wait before reconnecting after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How one connected round of a watch ended.
enum RoundEnd {
    Shutdown,
    Reconnect,
}

/// Watches a mailbox until `shutdown` turns true: handles new messages exactly like
/// [`poll_once`], waiting in IDLE (re-issued every 25 minutes), reconnecting with a fresh token
/// before the token expires, reconnecting with backoff and jitter when the connection drops, and
/// polling once after every reconnect so nothing that arrived meanwhile is missed. Shutdown
/// finishes the message in hand.
///
/// # Errors
/// As [`poll_once`], except that transient failures are retried rather than returned.
#[allow(
    clippy::too_many_arguments,
    reason = "the outside world is passed in explicitly"
)]
pub async fn watch<S: TokenStore>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    state_dir: &Path,
    options: &PollOptions,
    settings: WatchOptions,
    out: &Output,
    clock: &dyn crate::clock::Clock,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<PollSummary> {
    let files = StateFiles::new(state_dir, &account.name, &options.mailbox);
    let _lock = files.lock(&options.mailbox).await?;
    require_start(&files, account, options)?;
    let flag = shutdown.clone();
    let stop = move || *flag.borrow();
    let mut total = PollSummary::default();
    let mut backoff = FIRST_BACKOFF;
    while !stop() {
        let round = watch_round(
            account,
            tokens,
            &files,
            options,
            settings,
            out,
            clock,
            &mut shutdown,
            &stop,
            &mut total,
            &mut backoff,
        )
        .await;
        match round {
            Ok(RoundEnd::Shutdown) => break,
            Ok(RoundEnd::Reconnect) => continue,
            Err(e) if crate::exit::classify(&e) == crate::exit::Exit::Transient => {
                let wait = jitter(backoff);
                out.warn(&format!(
                    "{}; reconnecting in {:.1}s",
                    crate::error::error_text(e.as_ref()),
                    wait.as_secs_f64()
                ));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[allow(
    clippy::too_many_arguments,
    reason = "the loop state of one watch, passed explicitly"
)]
async fn watch_round<S: TokenStore>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    files: &StateFiles,
    options: &PollOptions,
    settings: WatchOptions,
    out: &Output,
    clock: &dyn crate::clock::Clock,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    stop: &dyn Fn() -> bool,
    total: &mut PollSummary,
    backoff: &mut Duration,
) -> Result<RoundEnd> {
    let mut imap = Imap::open(account, tokens).await?;
    *backoff = FIRST_BACKOFF;
    let summary =
        select_and_pass(account, &mut imap, files, options, out, clock.now(), stop).await?;
    total.handled += summary.handled;
    let use_idle = settings.idle && imap.can_idle();
    if settings.idle && !use_idle {
        out.warn(&format!(
            "{} has no IDLE; checking every {}s instead",
            imap.server(),
            settings.poll_interval.as_secs()
        ));
    }
    loop {
        if stop() {
            imap.logout().await;
            return Ok(RoundEnd::Shutdown);
        }
        let left = imap.renew_at.saturating_sub(clock.now());
        if left == 0 {
            tracing::info!(account = %account.name, "token nearly expired; reconnecting with a fresh one");
            imap.logout().await;
            return Ok(RoundEnd::Reconnect);
        }
        let wait = Duration::from_secs(left).min(if use_idle {
            IDLE_REISSUE
        } else {
            settings.poll_interval
        });
        let deadline = tokio::time::Instant::now() + wait;
        if use_idle {
            let (back, wake) = imap.idle(deadline, shutdown).await?;
            imap = back;
            if wake == crate::imap::Wake::Shutdown {
                imap.logout().await;
                return Ok(RoundEnd::Shutdown);
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.wait_for(|s| *s) => {
                    imap.logout().await;
                    return Ok(RoundEnd::Shutdown);
                }
            }
            imap.noop().await?;
        }
        let Some(mut checkpoint) = files.load()? else {
            anyhow::bail!("poll state of {} vanished while watching", options.mailbox);
        };
        let summary = pass(
            account,
            &mut imap,
            files,
            &mut checkpoint,
            options,
            out,
            stop,
        )
        .await?;
        total.handled += summary.handled;
        total.last_uid = summary.last_uid;
    }
}

/// `d` ± 20%, so many clients cut off together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    d.mul_f64(factor)
}

/// The checkpoint to continue from (with the SINCE window of a first `--since` poll).
fn starting_point(
    saved: Option<Checkpoint>,
    selected: Selected,
    options: &PollOptions,
    out: &Output,
    files: &StateFiles,
    now: u64,
) -> Result<Checkpoint> {
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
            out.warn(&format!(
                "UIDVALIDITY of {} changed ({} → {}): the mailbox was recreated; {}",
                options.mailbox,
                cp.uidvalidity,
                selected.uidvalidity,
                if options.replay {
                    "handling every message again (--replay)"
                } else {
                    "continuing with new messages only (use --replay to handle all again)"
                }
            ));
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
        files.save(&checkpoint)?;
    }
    Ok(checkpoint)
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

/// A message as `poll` prints it (schema version 1).
#[derive(Debug, Serialize)]
struct MessageJson {
    version: u32,
    account: String,
    mailbox: String,
    uidvalidity: u32,
    uid: u32,
    message_id: Option<String>,
    date: Option<String>,
    from: Vec<String>,
    to: Vec<String>,
    cc: Vec<String>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<AttachmentJson>,
    size: usize,
}

#[derive(Debug, Serialize)]
struct AttachmentJson {
    name: Option<String>,
    content_type: Option<String>,
    size: usize,
    saved_as: Option<String>,
}

fn addresses(list: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    list.map(|a| {
        a.iter()
            .map(|addr| match (addr.name(), addr.address()) {
                (Some(n), Some(a)) => format!("{n} <{a}>"),
                (None, Some(a)) => a.to_string(),
                (Some(n), None) => n.to_string(),
                (None, None) => String::new(),
            })
            .collect()
    })
    .unwrap_or_default()
}

async fn handle(
    account: &Account,
    options: &PollOptions,
    uidvalidity: u32,
    uid: u32,
    raw: &[u8],
    out: &Output,
) -> Result<()> {
    let parsed = MessageParser::default().parse(raw);
    match &options.handler {
        Handler::Json {
            html,
            save_attachments,
        } => {
            let json = message_json(
                account,
                options,
                uidvalidity,
                uid,
                raw,
                parsed.as_ref(),
                *html,
                save_attachments.as_deref(),
            )?;
            out.json(&json)
        }
        Handler::Save(dir) => {
            let path = dir.join(format!("{uidvalidity}-{uid}.eml"));
            crate::fsutil::write_atomic(&path, raw)
                .with_context(|| format!("failed to save UID {uid} to {}", path.display()))
        }
        Handler::Exec(cmd) => {
            exec(
                account,
                options,
                uidvalidity,
                uid,
                raw,
                parsed.as_ref(),
                cmd,
            )
            .await
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one message's context, passed explicitly"
)]
fn message_json(
    account: &Account,
    options: &PollOptions,
    uidvalidity: u32,
    uid: u32,
    raw: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    with_html: bool,
    save_attachments: Option<&Path>,
) -> Result<MessageJson> {
    let mut attachments = Vec::new();
    if let Some(m) = parsed {
        for (i, part) in m.attachments().enumerate() {
            let name = part.attachment_name().map(str::to_string);
            let saved_as = match save_attachments {
                Some(dir) => {
                    let safe = name
                        .as_deref()
                        .map(|n| n.replace(['/', '\\', '\0'], "_"))
                        .filter(|n| !n.is_empty() && n != "." && n != "..")
                        .unwrap_or_else(|| format!("attachment-{}", i + 1));
                    let path = dir.join(format!("{uidvalidity}-{uid}-{safe}"));
                    crate::fsutil::write_atomic(&path, part.contents()).with_context(|| {
                        format!(
                            "failed to save an attachment of UID {uid} to {}",
                            path.display()
                        )
                    })?;
                    Some(path.display().to_string())
                }
                None => None,
            };
            attachments.push(AttachmentJson {
                name,
                content_type: part.content_type().map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{sub}", c.ctype()),
                    None => c.ctype().to_string(),
                }),
                size: part.contents().len(),
                saved_as,
            });
        }
    }
    Ok(MessageJson {
        version: JSON_SCHEMA_VERSION,
        account: account.name.clone(),
        mailbox: options.mailbox.clone(),
        uidvalidity,
        uid,
        message_id: parsed.and_then(|m| m.message_id()).map(str::to_string),
        date: parsed.and_then(|m| m.date()).map(|d| d.to_rfc3339()),
        from: addresses(parsed.and_then(|m| m.from())),
        to: addresses(parsed.and_then(|m| m.to())),
        cc: addresses(parsed.and_then(|m| m.cc())),
        subject: parsed.and_then(|m| m.subject()).map(str::to_string),
        text: parsed
            .filter(|m| !m.text_body.is_empty())
            .and_then(|m| m.body_text(0))
            .map(|t| t.into_owned()),
        html: if with_html {
            parsed
                .filter(|m| !m.html_body.is_empty())
                .and_then(|m| m.body_html(0))
                .map(|t| t.into_owned())
        } else {
            None
        },
        attachments,
        size: raw.len(),
    })
}

async fn exec(
    account: &Account,
    options: &PollOptions,
    uidvalidity: u32,
    uid: u32,
    raw: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    cmd: &str,
) -> Result<()> {
    let one_line = |s: String| s.replace(['\r', '\n'], " ");
    let env = [
        ("MAILPILOT_ACCOUNT", account.name.clone()),
        ("MAILPILOT_MAILBOX", options.mailbox.clone()),
        ("MAILPILOT_UIDVALIDITY", uidvalidity.to_string()),
        ("MAILPILOT_UID", uid.to_string()),
        (
            "MAILPILOT_MESSAGE_ID",
            parsed
                .and_then(|m| m.message_id())
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "MAILPILOT_FROM",
            addresses(parsed.and_then(|m| m.from())).join(", "),
        ),
        (
            "MAILPILOT_TO",
            addresses(parsed.and_then(|m| m.to())).join(", "),
        ),
        (
            "MAILPILOT_SUBJECT",
            parsed
                .and_then(|m| m.subject())
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "MAILPILOT_DATE",
            parsed
                .and_then(|m| m.date())
                .map(|d| d.to_rfc3339())
                .unwrap_or_default(),
        ),
    ];
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.into_iter().map(|(k, v)| (k, one_line(v))))
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{cmd}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input closes the pipe early; that is not a failure.
        match stdin.write_all(raw).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(e).with_context(|| format!("failed to write UID {uid} to `{cmd}`"))
            }
            _ => {}
        }
        drop(stdin);
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("failed to wait for `{cmd}`"))?;
    if !status.success() {
        bail!("the --exec command `{cmd}` failed for UID {uid} ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IMAP dates and state file names.
    #[test]
    fn helpers() {
        assert_eq!(imap_date("2026-11-27T16:22:19Z"), "27-Nov-2026");
        let f = StateFiles::new(Path::new("/s"), "work", "Archive/2026 Q1");
        assert_eq!(
            f.json,
            PathBuf::from("/s/poll/work/Archive%2F2026%20Q1.json")
        );
    }
}

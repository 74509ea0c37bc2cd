//! `mailpilot status`: one look at what needs a human — for people and monitoring checks.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::error::AuthErrorKind;
use crate::exit::Exit;
use crate::oauth::{Store, TokenStore};
use crate::output::JSON_SCHEMA_VERSION;
use crate::schedule::{local_time, LastRun};

/// Summarises accounts (is there a grant, did its last refresh fail) and jobs (last run, last
/// error). Exits 77 when an account needs a new login, 1 (or 75) when a job's last run failed, so
/// it can serve as a monitoring check.
#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Serialize)]
struct StatusJson {
    version: u32,
    ok: bool,
    accounts: Vec<Item<AccountState>>,
    jobs: Vec<Item<JobState>>,
    outbox: OutboxJson,
}

/// What waits in the outbox.
#[derive(Debug, Default, Serialize)]
struct OutboxJson {
    queued: usize,
    failed: usize,
    /// Seconds the oldest queued message has waited.
    oldest_queued_secs: u64,
}

/// The outbox's counts, and the status they call for: failed messages or one waiting longer than
/// `warn_after` need a look (exit 1).
async fn outbox_state(
    outbox: &crate::outbox::Outbox,
    warn_after: std::time::Duration,
    now: u64,
) -> Result<(OutboxJson, Exit, String)> {
    let mut summary = OutboxJson::default();
    for q in outbox.list().await? {
        match q.status {
            crate::outbox::Status::Queued => {
                summary.queued += 1;
                summary.oldest_queued_secs = summary
                    .oldest_queued_secs
                    .max(now.saturating_sub(q.head.queued_at));
            }
            crate::outbox::Status::Failed => summary.failed += 1,
        }
    }
    let age =
        humantime::format_duration(std::time::Duration::from_secs(summary.oldest_queued_secs));
    let (exit, detail) = if summary.failed > 0 {
        (
            Exit::Failure,
            format!(
                "{} failed (see `mailpilot queue list`), {} queued",
                summary.failed, summary.queued
            ),
        )
    } else if summary.oldest_queued_secs > warn_after.as_secs() {
        (
            Exit::Failure,
            format!(
                "{} queued, the oldest for {age} (is `mailpilot daemon` or a `queue flush` running?)",
                summary.queued
            ),
        )
    } else {
        (Exit::Success, format!("{} queued", summary.queued))
    };
    Ok((summary, exit, detail))
}

#[derive(Serialize)]
struct Item<S> {
    name: String,
    state: S,
    detail: String,
}

/// An account's health, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccountState {
    /// A grant is stored and its last refresh worked.
    Ok,
    /// The last refresh failed, but not for want of a login (network, server).
    Degraded,
    /// A person must sign in again (or, for an app, renew its credential).
    NeedsAuthorization,
    /// The app's certificate expires within [`CERTIFICATE_WARNING`]: a person must upload a new
    /// one before then.
    Expiring,
}

/// How long before a client certificate expires `status` starts failing (exit 1), so monitoring
/// asks for a new one in time.
const CERTIFICATE_WARNING: u64 = 14 * 86_400;

/// The state of an app's client certificate when it needs a person: expired (77) or within
/// [`CERTIFICATE_WARNING`] of it (1); `None` when fine or not used.
fn certificate_state(account: &crate::config::Account, now: u64) -> Option<(AccountState, String)> {
    let cert = account.client_certificate.as_ref()?;
    let at = match crate::oauth::assertion::certificate_expiry(&cert.certificate) {
        Ok(at) => at,
        Err(e) => {
            return Some((
                AccountState::NeedsAuthorization,
                crate::error::error_text(e.as_ref()),
            ))
        }
    };
    let when = local_time(at);
    if at <= now {
        return Some((
            AccountState::NeedsAuthorization,
            format!("the client certificate expired at {when}: create a new one and upload it to the app"),
        ));
    }
    (at - now < CERTIFICATE_WARNING).then(|| {
        (
            AccountState::Expiring,
            format!("the client certificate expires at {when}: create a new one and upload it to the app before then"),
        )
    })
}

/// A job's last run, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    /// Never run.
    NeverRun,
    /// Started, not ended (or killed).
    Running,
    /// The last run succeeded.
    Ok,
    /// The last run failed.
    Failed,
}

impl AccountState {
    fn word(self) -> &'static str {
        match self {
            AccountState::Ok => Exit::Success.word(),
            AccountState::Degraded => "degraded",
            AccountState::Expiring => "certificate-expiring",
            AccountState::NeedsAuthorization => Exit::NeedsAuthorization.word(),
        }
    }
}

impl JobState {
    fn word(self) -> &'static str {
        match self {
            JobState::NeverRun => "never-run",
            JobState::Running => "running",
            JobState::Ok => Exit::Success.word(),
            JobState::Failed => Exit::Failure.word(),
        }
    }
}

/// Both states are shown (and written in `--json`) as their word.
macro_rules! serialize_as_word {
    ($($t:ty),+) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.word())
            }
        }
    )+};
}

serialize_as_word!(AccountState, JobState);

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Bad configuration.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let store = ctx.store()?;
        let home = ctx.state_home()?;
        let mut worst = Exit::Success;
        let mut accounts = Vec::new();
        for account in config.accounts.values() {
            let (state, detail) = match certificate_state(account, ctx.clock.now()) {
                Some(expiring) => expiring,
                None => account_state(&store, account).await,
            };
            match state {
                AccountState::NeedsAuthorization => worst = worst.worst(Exit::NeedsAuthorization),
                AccountState::Expiring => worst = worst.worst(Exit::Failure),
                AccountState::Ok | AccountState::Degraded => {}
            }
            accounts.push(Item {
                name: account.name.clone(),
                state,
                detail,
            });
        }
        let mut jobs = Vec::new();
        for job in config.jobs.values() {
            let last = crate::schedule::JobState::new(&home, &job.name)
                .last_run()
                .await?;
            let (state, detail) = job_state(last.as_ref());
            if let Some(l) = last.filter(|_| state == JobState::Failed) {
                worst = worst.worst(Exit::from_code(l.exit_code).as_check());
            }
            jobs.push(Item {
                name: job.name.clone(),
                state,
                detail,
            });
        }
        let (outbox, outbox_exit, outbox_detail) =
            outbox_state(&ctx.outbox()?, config.sendmail.warn_after, ctx.clock.now()).await?;
        worst = worst.worst(outbox_exit);
        if ctx.out.is_json() {
            ctx.out.json(&StatusJson {
                version: JSON_SCHEMA_VERSION,
                ok: worst == Exit::Success,
                accounts,
                jobs,
                outbox,
            })?;
        } else {
            for a in &accounts {
                line(ctx, "account", &a.name, a.state.word(), &a.detail)?;
            }
            for j in &jobs {
                line(ctx, "job", &j.name, j.state.word(), &j.detail)?;
            }
            if outbox.queued + outbox.failed > 0 {
                line(ctx, "outbox", "queue", outbox_exit.word(), &outbox_detail)?;
            }
        }
        Ok(worst)
    }
}

fn line(ctx: &Ctx, kind: &str, name: &str, state: &str, detail: &str) -> Result<()> {
    ctx.out
        .data(format!("{kind} {name}: {state} {detail}").trim_end())
}

fn job_state(last: Option<&LastRun>) -> (JobState, String) {
    match last {
        None => (JobState::NeverRun, String::new()),
        Some(l) if l.ended == 0 => (
            JobState::Running,
            format!("since {}", local_time(l.started)),
        ),
        Some(l) if l.exit_code == 0 => (JobState::Ok, format!("last run {}", local_time(l.ended))),
        Some(l) => (
            JobState::Failed,
            format!(
                "exit {} at {}: {}",
                l.exit_code,
                local_time(l.ended),
                l.error
                    .as_deref()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            ),
        ),
    }
}

async fn account_state(store: &Store, account: &crate::config::Account) -> (AccountState, String) {
    let name = &account.name;
    match (store.load(name).await, store.last_error(name).await) {
        (Err(e), _) if crate::exit::classify(&e) == crate::exit::Exit::Transient => (
            AccountState::Degraded,
            format!("stored grant not reachable now: {e:#}"),
        ),
        (Err(e), _) => (
            AccountState::NeedsAuthorization,
            format!("stored grant unreadable: {e:#}"),
        ),
        (Ok(None), Ok(None)) if !account.grant.needs_person() => (
            AccountState::Ok,
            "app identity; tokens are fetched when needed".into(),
        ),
        (Ok(None), Ok(Some(err))) if !account.grant.needs_person() => {
            let state = match err.kind {
                AuthErrorKind::NeedsAuthorization => AccountState::NeedsAuthorization,
                _ => AccountState::Degraded,
            };
            (
                state,
                format!("last token request failed ({}): {}", err.kind, err.message),
            )
        }
        (Ok(None), _) => (
            AccountState::NeedsAuthorization,
            format!("no grant stored; run `mailpilot auth login {name}`"),
        ),
        (Ok(Some(_)), Ok(Some(err))) if err.kind == AuthErrorKind::NeedsAuthorization => {
            (AccountState::NeedsAuthorization, err.message)
        }
        (Ok(Some(_)), Ok(Some(err))) => (
            AccountState::Degraded,
            format!("last refresh failed ({}): {}", err.kind, err.message),
        ),
        (Ok(Some(_)), _) => (AccountState::Ok, String::new()),
    }
}

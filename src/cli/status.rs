//! `mailpilot status`: one look at what needs a human — for people and monitoring checks.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::exit::Exit;
use crate::oauth::{FileStore, TokenStore};
use crate::output::JSON_SCHEMA_VERSION;
use crate::schedule::{local_time, JobFiles};

/// Summarises accounts (is there a grant, did its last refresh fail) and jobs (last run, last
/// error). Exits 77 when an account needs a new login, 1 (or 75) when a job's last run failed, so
/// it can serve as a monitoring check.
#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Serialize)]
struct StatusJson {
    version: u32,
    ok: bool,
    accounts: Vec<Item>,
    jobs: Vec<Item>,
}

#[derive(Serialize)]
struct Item {
    name: String,
    state: &'static str,
    detail: String,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Bad configuration.
    pub fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let store = ctx.store()?;
        let state_dir = ctx.state_dir()?;
        let mut worst = Exit::Success;
        let mut note = |e: Exit| {
            if e.severity() > worst.severity() {
                worst = e;
            }
        };
        let mut accounts = Vec::new();
        for account in config.accounts.values() {
            let (state, detail) = account_state(&store, &account.name);
            if state == "needs-authorization" {
                note(Exit::NeedsAuthorization);
            }
            accounts.push(Item {
                name: account.name.clone(),
                state,
                detail,
            });
        }
        let mut jobs = Vec::new();
        for job in config.jobs.values() {
            let last = JobFiles::new(&state_dir, &job.name).last_run()?;
            let (state, detail) = match last {
                None => ("never-run", String::new()),
                Some(l) if l.ended == 0 => ("running", format!("since {}", local_time(l.started))),
                Some(l) if l.exit_code == 0 => ("ok", format!("last run {}", local_time(l.ended))),
                Some(l) => {
                    note(if l.exit_code == Exit::Transient.code() {
                        Exit::Transient
                    } else if l.exit_code == Exit::NeedsAuthorization.code() {
                        Exit::NeedsAuthorization
                    } else {
                        Exit::Failure
                    });
                    (
                        "failed",
                        format!(
                            "exit {} at {}: {}",
                            l.exit_code,
                            local_time(l.ended),
                            l.error
                                .unwrap_or_default()
                                .lines()
                                .next()
                                .unwrap_or_default()
                        ),
                    )
                }
            };
            jobs.push(Item {
                name: job.name.clone(),
                state,
                detail,
            });
        }
        if ctx.out.is_json() {
            ctx.out.json(&StatusJson {
                version: JSON_SCHEMA_VERSION,
                ok: worst == Exit::Success,
                accounts,
                jobs,
            })?;
        } else {
            for (kind, items) in [("account", &accounts), ("job", &jobs)] {
                for i in items.iter() {
                    ctx.out
                        .data(format!("{kind} {}: {} {}", i.name, i.state, i.detail).trim_end())?;
                }
            }
        }
        Ok(worst)
    }
}

fn account_state(store: &FileStore, name: &str) -> (&'static str, String) {
    match (store.load(name), store.last_error(name)) {
        (Err(e), _) => (
            "needs-authorization",
            format!("token file unreadable: {e:#}"),
        ),
        (Ok(None), _) => (
            "needs-authorization",
            format!("no grant stored; run `mailpilot auth login {name}`"),
        ),
        (Ok(Some(_)), Ok(Some(err))) if err.kind == "needs_authorization" => {
            ("needs-authorization", err.message)
        }
        (Ok(Some(_)), Ok(Some(err))) => (
            "degraded",
            format!("last refresh failed ({}): {}", err.kind, err.message),
        ),
        (Ok(Some(_)), _) => ("ok", String::new()),
    }
}

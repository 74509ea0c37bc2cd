//! `mailpilot daemon`: every scheduled job on its own clock.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::Ctx;
use crate::config::Config;
use crate::exit::{classify, Exit};
use crate::oauth::{Fetch, TokenSource, TokenStore};
use crate::output::error_text;
use crate::schedule::{local_time, next_run};

/// How often idle grants are checked for the keep-alive refresh.
const KEEPALIVE_CHECK: Duration = Duration::from_secs(3600);
/// A grant not refreshed for this long is refreshed by the daemon (Microsoft expires refresh tokens
/// unused for 90 days; Google's stay valid while used).
const KEEPALIVE_AGE: Duration = Duration::from_secs(7 * 86_400);

/// Runs every job that has a schedule (`schedule` or `every`), never two runs of one job at once,
/// and keeps rarely used grants alive. SIGHUP reloads the configuration; SIGTERM or SIGINT stop
/// it after the running job finishes (bounded by the job's timeout).
#[derive(Debug, clap::Args)]
pub struct Args {}

enum Signal {
    Stop,
    Reload,
}

impl Args {
    /// Runs until stopped.
    ///
    /// # Errors
    /// An invalid configuration at start, or signal handlers that cannot be installed.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let mut config = load(ctx)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term =
            signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
        let mut hup =
            signal(SignalKind::hangup()).context("failed to install the SIGHUP handler")?;
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => Signal::Stop,
                    _ = int.recv() => Signal::Stop,
                    _ = hup.recv() => Signal::Reload,
                };
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
        let mut next = plan(&config, ctx.clock.now());
        ctx.out.info(&format!(
            "daemon started: {} scheduled job{}",
            next.len(),
            if next.len() == 1 { "" } else { "s" }
        ));
        let mut next_keepalive = ctx.clock.now();
        loop {
            let now = ctx.clock.now();
            if now >= next_keepalive {
                keep_alive(ctx, &config).await;
                next_keepalive = now + KEEPALIVE_CHECK.as_secs();
            }
            let mut due: Vec<(u64, String)> = next
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(n, t)| (*t, n.clone()))
                .collect();
            due.sort();
            let mut reload_requested = false;
            for (_, name) in due {
                match rx.try_recv() {
                    Ok(Signal::Stop) => {
                        ctx.out.info("daemon stopping");
                        return Ok(Exit::Success);
                    }
                    Ok(Signal::Reload) => reload_requested = true,
                    Err(_) => {}
                }
                let Some(job) = config.jobs.get(&name) else {
                    continue;
                };
                run_one(ctx, job).await;
                if let Some(schedule) = &job.schedule {
                    // Planned from the end of the run: a slow run is never overlapped.
                    if let Some(t) = next_run(schedule, ctx.clock.now()) {
                        next.insert(name.clone(), t);
                    }
                }
            }
            if reload_requested {
                reload(ctx, &mut config, &mut next);
            }
            let wake = next
                .values()
                .min()
                .copied()
                .unwrap_or(u64::MAX)
                .min(next_keepalive);
            let sleep =
                Duration::from_secs(wake.saturating_sub(ctx.clock.now())).min(KEEPALIVE_CHECK);
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                sig = rx.recv() => match sig {
                    Some(Signal::Reload) => reload(ctx, &mut config, &mut next),
                    Some(Signal::Stop) | None => {
                        ctx.out.info("daemon stopping");
                        return Ok(Exit::Success);
                    }
                },
            }
        }
    }
}

/// Re-reads the configuration; a broken file is reported and the old configuration kept.
fn reload(ctx: &Ctx, config: &mut Config, next: &mut BTreeMap<String, u64>) {
    match load(ctx) {
        Ok(c) => {
            *config = c;
            *next = plan(config, ctx.clock.now());
            ctx.out.info(&format!(
                "configuration reloaded: {} scheduled jobs",
                next.len()
            ));
        }
        Err(e) => ctx.out.warn(&format!(
            "configuration not reloaded, keeping the old one: {}",
            error_text(e.as_ref())
        )),
    }
}

/// Loads the configuration and checks every job's command line up front.
fn load(ctx: &Ctx) -> Result<Config> {
    let config = ctx.config()?;
    for job in config.jobs.values() {
        super::parse_job(job)?;
    }
    Ok(config)
}

/// First run times: interval jobs run at once, cron jobs at their next match.
fn plan(config: &Config, now: u64) -> BTreeMap<String, u64> {
    config
        .jobs
        .values()
        .filter_map(|j| {
            let first = match j.schedule.as_ref()? {
                crate::config::Schedule::Every(_) => now,
                cron => next_run(cron, now)?,
            };
            Some((j.name.clone(), first))
        })
        .collect()
}

async fn run_one(ctx: &Ctx, job: &crate::config::Job) {
    let started = std::time::Instant::now();
    ctx.out.info(&format!(
        "{} job={} event=start",
        local_time(ctx.clock.now()),
        job.name
    ));
    let (exit, error) = match super::run::run_job(ctx, job, false).await {
        Ok(exit) => (exit, None),
        Err(e) => (classify(&e), Some(error_text(e.as_ref()))),
    };
    let outcome = match exit {
        Exit::Success => "ok",
        Exit::Transient => "retry-later",
        Exit::NeedsAuthorization => "needs-authorization",
        Exit::Usage => "config-error",
        Exit::Failure => "failed",
    };
    let error = error.map_or(String::new(), |e| format!(" error={e:?}"));
    ctx.out.info(&format!(
        "{} job={} event=end outcome={outcome} exit={} duration={:.1}s{error}",
        local_time(ctx.clock.now()),
        job.name,
        exit.code(),
        started.elapsed().as_secs_f64()
    ));
}

/// Refreshes grants that have not been refreshed for [`KEEPALIVE_AGE`].
async fn keep_alive(ctx: &Ctx, config: &Config) {
    let Ok(store) = ctx.store() else { return };
    let now = ctx.clock.now();
    for account in config.accounts.values() {
        let Ok(Some(token)) = store.load(&account.name) else {
            continue;
        };
        if now.saturating_sub(token.refreshed_at) < KEEPALIVE_AGE.as_secs() {
            continue;
        }
        let source = TokenSource::new(account, &store, ctx.clock.as_ref());
        match source.access_token(Fetch::Force).await {
            Ok(_) => ctx.out.info(&format!(
                "keep-alive: refreshed the idle grant of account \"{}\"",
                account.name
            )),
            Err(e) => ctx.out.warn(&format!(
                "keep-alive of account \"{}\" failed: {}",
                account.name,
                error_text(e.as_ref())
            )),
        }
    }
}

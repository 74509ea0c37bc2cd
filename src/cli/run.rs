//! `mailpilot run NAME`: one run of a configured job, now.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::config::{Config, Job};
use crate::error::{Busy, TimedOut, UsageError};
use crate::exit::{classify, Exit};
use crate::output::error_report;
use crate::schedule::{self, JobState, LastRun};

/// Runs job NAME from the configuration once, now — what a crontab line or a systemd service
/// calls. A run already in progress makes this one exit 75 at once (or wait with --wait). The
/// outcome is recorded for `jobs` and `status`; a failure runs the job's on_failure command.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job name (`[jobs.NAME]`)
    name: String,
    /// If the job is already running, wait for it to finish instead of exiting 75
    #[arg(long)]
    wait: bool,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// The job's own failure (after recording it), an unknown job, or a busy job (75).
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let job = find(&config, &self.name)?;
        run_job(ctx, job, self.wait).await
    }
}

/// The job called `name`.
///
/// # Errors
/// [`UsageError`] listing the configured jobs.
pub fn find<'c>(config: &'c Config, name: &str) -> Result<&'c Job> {
    config.jobs.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.jobs.keys().map(String::as_str).collect();
        UsageError(format!(
            "no job named \"{name}\" in {} (configured: {})",
            config.path.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ))
        .into()
    })
}

/// Runs `job` under its lock, records the outcome, and runs `on_failure` when it fails.
///
/// # Errors
/// [`Busy`] when another run holds the lock (and `wait` is false); otherwise the job's error.
pub async fn run_job(ctx: &Ctx, job: &Job, wait: bool) -> Result<Exit> {
    let files = JobState::new(&ctx.state_home()?, &job.name);
    // --wait queues behind a running run for as long as it takes; otherwise exit 75 at once.
    let wait_for = if wait { None } else { Some(Duration::ZERO) };
    let Some(_lock) = files.lock(wait_for).await? else {
        return Err(Busy(format!(
            "job {} is already running; this run exits (use --wait to queue behind it)",
            job.name
        ))
        .into());
    };
    let started = ctx.clock.now();
    files
        .record(&LastRun {
            version: 1,
            started,
            ..LastRun::default()
        })
        .await?;
    let result = match job.timeout {
        Some(limit) => match tokio::time::timeout(limit, super::execute_job(ctx, job)).await {
            Ok(r) => r,
            Err(_) => Err(TimedOut(format!(
                "job {} ran longer than its timeout of {}",
                job.name,
                humantime::format_duration(limit)
            ))
            .into()),
        },
        None => super::execute_job(ctx, job).await,
    };
    let (exit, error) = match &result {
        Ok(exit) => (*exit, None),
        Err(e) => (classify(e), Some(error_report(e).join("\n"))),
    };
    files
        .record(&LastRun {
            version: 1,
            started,
            ended: ctx.clock.now(),
            exit_code: exit.code(),
            error: error.clone(),
        })
        .await?;
    if exit != Exit::Success {
        if let Some(cmd) = &job.on_failure {
            let text =
                error.unwrap_or_else(|| format!("job {} exited with {}", job.name, exit.code()));
            schedule::on_failure(job, cmd, exit.code(), &text).await;
        }
    }
    result
}

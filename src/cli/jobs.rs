//! `mailpilot jobs`: the configured jobs, their next run and last outcome.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::config::Spelled;
use crate::exit::Exit;
use crate::output::JSON_SCHEMA_VERSION;
use crate::schedule::{local_time, next_run, JobState, LastRun};

/// Lists the configured jobs with their schedule, next run time and last outcome.
#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Serialize)]
struct JobsJson {
    version: u32,
    jobs: Vec<JobJson>,
}

#[derive(Serialize)]
struct JobJson {
    name: String,
    kind: &'static str,
    schedule: Option<String>,
    next_run: Option<u64>,
    last_run: Option<LastRun>,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Bad configuration.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let now = ctx.clock.now();
        let home = ctx.state_home()?;
        let mut rows = Vec::new();
        for job in config.jobs.values() {
            rows.push(JobJson {
                name: job.name.clone(),
                kind: job.kind.name(),
                schedule: job.schedule.as_ref().map(|s| match s {
                    crate::config::Schedule::Cron(p) => format!("cron \"{p}\""),
                    crate::config::Schedule::Every(d) => {
                        format!("every {}", humantime::format_duration(*d))
                    }
                }),
                next_run: job.schedule.as_ref().and_then(|s| next_run(s, now)),
                last_run: JobState::new(&home, &job.name).last_run().await?,
            });
        }
        if ctx.out.is_json() {
            ctx.out.json(&JobsJson {
                version: JSON_SCHEMA_VERSION,
                jobs: rows,
            })?;
            return Ok(Exit::Success);
        }
        for r in rows {
            let next = r.next_run.map_or("-".into(), local_time);
            let last = match &r.last_run {
                None => "never run".into(),
                Some(l) if l.ended == 0 => {
                    format!("running since {} (or killed)", local_time(l.started))
                }
                Some(l) if l.exit_code == 0 => format!("ok at {}", local_time(l.ended)),
                Some(l) => format!("exit {} at {}", l.exit_code, local_time(l.ended)),
            };
            ctx.out.data(&format!(
                "{:<20} {:<5} {:<24} next: {:<26} last: {last}",
                r.name,
                r.kind,
                r.schedule.unwrap_or_else(|| "(run by hand)".into()),
                next
            ))?;
        }
        Ok(Exit::Success)
    }
}

//! Jobs over time: when a job runs next, its lock (one run of a job at a time, on any host sharing
//! the state database), its last outcome (`jobs/NAME.json`, or a record in the state database,
//! for `jobs` and `status`), its `on_failure` hook, and the cron/systemd text
//! that runs it from outside. Running the job itself is the CLI's business (it parses the job's
//! arguments like a command line).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Local, TimeZone};
use serde::{Deserialize, Serialize};

use crate::config::{Job, Schedule};
use crate::error::clean;

/// The last run of a job, as remembered in `jobs/NAME.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// Format version.
    pub version: u32,
    /// When it started, unix seconds.
    pub started: u64,
    /// When it ended, unix seconds (0 while running or if it was killed).
    pub ended: u64,
    /// Its exit status.
    pub exit_code: u8,
    /// The error report, if it failed.
    pub error: Option<String>,
}

/// How often a run waiting for a job's lock file retries it.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// The longest a run waits for a job's lock with `--wait` (the database's lock timeout is a
/// 32-bit number of milliseconds).
const LOCK_FOREVER: Duration = Duration::from_secs(20 * 24 * 3600);

/// Where one job's lock and last outcome are.
pub enum JobState {
    /// `jobs/NAME.json` and `jobs/NAME.lock` in the state directory.
    Files {
        /// The outcome file.
        state: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A record and an advisory lock in the state database.
    Postgres {
        /// The database.
        db: std::sync::Arc<crate::db::Db>,
        /// The job's name.
        name: String,
    },
}

/// The jobs with a recorded run in `home` (for `state migrate`).
///
/// # Errors
/// The directory or the database cannot be read.
pub async fn recorded_jobs(home: &crate::db::StateHome) -> Result<Vec<String>> {
    match home {
        crate::db::StateHome::Postgres(db) => Ok(db
            .records_of(crate::db::RecordKind::Job)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect()),
        crate::db::StateHome::Files(dir) => {
            crate::fsutil::names_with_suffix(&dir.join("jobs"), ".json")
        }
    }
}

/// A held job lock; dropping it releases the lock.
pub enum JobLock {
    /// A lock file.
    File(File),
    /// An advisory lock in its own database session.
    Db(crate::db::Lock),
}

impl JobState {
    /// The state of `job` in `home`.
    pub fn new(home: &crate::db::StateHome, job: &str) -> Self {
        match home {
            crate::db::StateHome::Files(state_dir) => {
                let dir = state_dir.join("jobs");
                JobState::Files {
                    state: dir.join(format!("{job}.json")),
                    lock: dir.join(format!("{job}.lock")),
                }
            }
            crate::db::StateHome::Postgres(db) => JobState::Postgres {
                db: db.clone(),
                name: job.to_string(),
            },
        }
    }

    /// The last run, if any.
    ///
    /// # Errors
    /// The record is unreadable or corrupt.
    pub async fn last_run(&self) -> Result<Option<LastRun>> {
        let (bytes, what) = match self {
            JobState::Files { state, .. } => (
                crate::fsutil::read_optional(state)?,
                state.display().to_string(),
            ),
            JobState::Postgres { db, name } => (
                db.record(crate::db::RecordKind::Job, name)
                    .await?
                    .map(String::into_bytes),
                format!("{name} in {}", db.target()),
            ),
        };
        bytes
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("job state {what} is corrupt"))
            })
            .transpose()
    }

    /// Records a run.
    ///
    /// # Errors
    /// The write fails.
    pub async fn record(&self, run: &LastRun) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(run).context("failed to encode job state")?;
        match self {
            JobState::Files { state, .. } => {
                crate::fsutil::private_dir(state.parent().unwrap_or(Path::new(".")))?;
                crate::fsutil::write_atomic(state, &bytes)
            }
            JobState::Postgres { db, name } => {
                let text = String::from_utf8(bytes).context("job state is not UTF-8")?;
                db.put_record(crate::db::RecordKind::Job, name, &text).await
            }
        }
    }

    /// Takes the job's lock, waiting up to `wait` for a run holding it (`None`: as long as it
    /// takes); `None` when the wait ran out.
    ///
    /// # Errors
    /// The lock cannot be taken for a reason other than contention.
    pub async fn lock(&self, wait: Option<Duration>) -> Result<Option<JobLock>> {
        match self {
            JobState::Files { lock, .. } => {
                Ok(
                    crate::fsutil::wait_for_lock(|| crate::fsutil::try_lock(lock), wait, LOCK_POLL)
                        .await?
                        .map(JobLock::File),
                )
            }
            JobState::Postgres { db, name } => Ok(db
                .lock(&format!("job {name}"), wait.unwrap_or(LOCK_FOREVER))
                .await?
                .map(JobLock::Db)),
        }
    }
}

/// The first run time of `schedule` strictly after `after` (unix seconds), in local time for
/// cron expressions.
pub fn next_run(schedule: &Schedule, after: u64) -> Option<u64> {
    match schedule {
        Schedule::Every(d) => Some(after + d.as_secs().max(1)),
        Schedule::Cron(pattern) => {
            let cron: croner::Cron = pattern.parse().ok()?;
            let start: DateTime<Local> = Local
                .timestamp_opt(i64::try_from(after).ok()?, 0)
                .single()?;
            let next = cron.find_next_occurrence(&start, false).ok()?;
            u64::try_from(next.timestamp()).ok()
        }
    }
}

/// Local RFC 3339 time for people.
pub fn local_time(unix: u64) -> String {
    Local
        .timestamp_opt(i64::try_from(unix).unwrap_or(0), 0)
        .single()
        .map_or_else(
            || unix.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S %z").to_string(),
        )
}

/// The most of an error report passed to `on_failure` in `MAILPILOT_ERROR`: a server's 1 MB error
/// text would exceed the kernel's limit for one variable and the hook would never start.
const HOOK_ERROR_MAX: usize = 8192;

/// Runs a job's `on_failure` command with the failure in its environment (one line, bounded,
/// without control characters).
pub async fn on_failure(job: &Job, command: &str, exit_code: u8, error: &str) {
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("MAILPILOT_JOB", &job.name)
            .env("MAILPILOT_EXIT_CODE", exit_code.to_string())
            .env("MAILPILOT_ERROR", clean(error, HOOK_ERROR_MAX))
            .stdin(Stdio::null())
            .status(),
    )
    .await;
    match result {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(job = %job.name, %status, "on_failure command failed"),
        Ok(Err(e)) => {
            tracing::warn!(job = %job.name, error = %e, "on_failure command could not start")
        }
        Err(_) => tracing::warn!(job = %job.name, "on_failure command timed out after 60s"),
    }
}

/// A crontab line for `job` (absolute paths), or an explanation when its schedule has no cron
/// form.
///
/// # Errors
/// The job has no schedule, or an interval cron cannot express.
pub fn crontab_line(job: &Job, bin: &Path, config: &Path) -> Result<String> {
    let pattern = match &job.schedule {
        None => bail!("job {} has no schedule", job.name),
        Some(Schedule::Cron(p)) => p.clone(),
        Some(Schedule::Every(d)) => every_as_cron(*d).with_context(|| {
            format!("job {}: every = \"{}\" has no crontab form; use a cron schedule, a systemd timer (print-systemd) or `mailpilot daemon`", job.name, humantime::format_duration(*d))
        })?,
    };
    Ok(format!(
        "{pattern} {} --config {} -q run {}",
        bin.display(),
        config.display(),
        job.name
    ))
}

/// `15m` → `*/15 * * * *`, `2h` → `0 */2 * * *`, `1d` → `0 0 * * *`.
fn every_as_cron(d: Duration) -> Option<String> {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 && s / 86_400 == 1 => Some("0 0 * * *".into()),
        s if s % 3600 == 0 && 24 % (s / 3600) == 0 => Some(if s == 3600 {
            "0 * * * *".into()
        } else {
            format!("0 */{} * * *", s / 3600)
        }),
        s if s % 60 == 0 && 60 % (s / 60) == 0 => Some(if s == 60 {
            "* * * * *".into()
        } else {
            format!("*/{} * * * *", s / 60)
        }),
        _ => None,
    }
}

/// A systemd service and timer pair for `job`.
///
/// # Errors
/// The job has no schedule, or a cron expression systemd's OnCalendar cannot mirror.
pub fn systemd_units(job: &Job, bin: &Path, config: &Path) -> Result<(String, String)> {
    let when = match &job.schedule {
        None => bail!("job {} has no schedule", job.name),
        Some(Schedule::Every(d)) => {
            format!("OnBootSec={s}s\nOnUnitActiveSec={s}s", s = d.as_secs())
        }
        Some(Schedule::Cron(p)) => format!(
            "OnCalendar={}",
            on_calendar(p).with_context(|| format!(
                "job {}: cannot convert \"{p}\" to OnCalendar; write the timer by hand",
                job.name
            ))?
        ),
    };
    let timeout = job.timeout.map_or(String::new(), |t| {
        format!("TimeoutStartSec={}s\n", t.as_secs())
    });
    let service = format!(
        "[Unit]\nDescription=mailpilot job {name}\n\n[Service]\nType=oneshot\n{timeout}ExecStart={bin} --config {config} -q run {name}\n",
        name = job.name,
        bin = bin.display(),
        config = config.display()
    );
    let timer = format!(
        "[Unit]\nDescription=Run mailpilot job {name}\n\n[Timer]\n{when}\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n",
        name = job.name
    );
    Ok((service, timer))
}

/// The system unit of `mailpilot daemon` (jobs, the sendmail outbox and its drop directory, the
/// relay) for the Debian package and hand installs: its own system user, state in
/// `/var/lib/mailpilot` (`StateDirectory`, mode 0700), the configuration read-only, and the
/// sandbox systemd offers a network service that writes only its state (`systemd-analyze
/// security` rates it). Binding relay ports under 1024 is the one capability it keeps.
pub fn daemon_unit(bin: &Path, config: &Path) -> String {
    format!(
        "[Unit]
Description=mailpilot daemon (scheduled jobs, the sendmail outbox, the relay)
Documentation=man:mailpilot(1) man:mailpilot-daemon(1)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=mailpilot
Group=mailpilot
ExecStart={bin} --config {config} daemon
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# Tokens, outbox, checkpoints: /var/lib/mailpilot, private to the service.
Environment=XDG_STATE_HOME=%S
StateDirectory=mailpilot
StateDirectoryMode=0700
UMask=0077
# The sendmail drop directory of other local users (when it exists).
ReadWritePaths=-/var/spool/mailpilot
# Relay listeners on ports under 1024 (25, 465, 587); nothing else.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged

[Install]
WantedBy=multi-user.target
",
        bin = bin.display(),
        config = config.display()
    )
}

/// `m h dom mon dow` → `dow *-mon-dom h:m:00` for numbers, `*`, lists and `*/n` steps.
fn on_calendar(pattern: &str) -> Option<String> {
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    let [m, h, dom, mon, dow] = fields.as_slice() else {
        return None;
    };
    let conv = |f: &str, two: bool| -> Option<String> {
        if f == "*" {
            return Some("*".into());
        }
        if let Some(step) = f.strip_prefix("*/") {
            step.parse::<u32>().ok()?;
            return Some(format!("0/{step}"));
        }
        let num = |p: &str| {
            p.parse::<u32>().ok().map(|n| {
                if two {
                    format!("{n:02}")
                } else {
                    n.to_string()
                }
            })
        };
        f.split(',')
            .map(|p| match p.split_once('-') {
                Some((a, b)) => Some(format!("{}..{}", num(a)?, num(b)?)),
                None => num(p),
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(","))
    };
    let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let day = |d: &str| d.parse::<usize>().ok().and_then(|n| days.get(n).copied());
    let dow = if *dow == "*" {
        String::new()
    } else {
        let names: Option<Vec<String>> = dow
            .split(',')
            .map(|d| match d.split_once('-') {
                Some((a, b)) => Some(format!("{}..{}", day(a)?, day(b)?)),
                None => day(d).map(String::from),
            })
            .collect();
        format!("{} ", names?.join(","))
    };
    Some(format!(
        "{dow}*-{}-{} {}:{}:00",
        conv(mon, true)?,
        conv(dom, true)?,
        conv(h, true)?,
        conv(m, true)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Intervals and simple cron patterns convert to crontab and OnCalendar forms.
    #[test]
    fn conversions() {
        assert_eq!(
            every_as_cron(Duration::from_secs(900)).as_deref(),
            Some("*/15 * * * *")
        );
        assert_eq!(
            every_as_cron(Duration::from_secs(3600)).as_deref(),
            Some("0 * * * *")
        );
        assert_eq!(
            every_as_cron(Duration::from_secs(7200)).as_deref(),
            Some("0 */2 * * *")
        );
        assert_eq!(every_as_cron(Duration::from_secs(7)), None);
        assert_eq!(on_calendar("0 6 * * *").as_deref(), Some("*-*-* 06:00:00"));
        assert_eq!(
            on_calendar("*/15 * * * *").as_deref(),
            Some("*-*-* *:0/15:00")
        );
        assert_eq!(
            on_calendar("30 7 * * 1,5").as_deref(),
            Some("Mon,Fri *-*-* 07:30:00")
        );
        assert_eq!(
            on_calendar("0 6 * * 1-5").as_deref(),
            Some("Mon..Fri *-*-* 06:00:00")
        );
        assert_eq!(on_calendar("0 6 * * MON-FRI"), None);
    }

    /// Next runs: intervals add up; cron patterns find the next match.
    #[test]
    fn next_runs() {
        assert_eq!(
            next_run(&Schedule::Every(Duration::from_secs(15)), 100),
            Some(115)
        );
        let next = next_run(&Schedule::Cron("* * * * *".into()), 1_795_796_539).expect("next");
        assert!(
            next > 1_795_796_539 && next <= 1_795_796_539 + 60 && next.is_multiple_of(60),
            "{next}"
        );
    }
}

//! `mailpilot daemon`: every scheduled job on its own clock.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::Ctx;
use crate::config::Config;
use crate::error::error_text;
use crate::exit::{classify, Exit};
use crate::oauth::{Fetch, TokenSource, TokenStore};
use crate::outbox::Sessions;
use crate::schedule::{local_time, next_run};

/// How often the outbox is looked at: a message `sendmail` could not deliver goes out within a
/// second of being due.
const OUTBOX_CHECK: Duration = Duration::from_secs(1);
/// How often idle grants are checked for the keep-alive refresh.
const KEEPALIVE_CHECK: Duration = Duration::from_secs(3600);
/// A grant not refreshed for this long is refreshed by the daemon (Microsoft expires refresh tokens
/// unused for 90 days; Google's stay valid while used).
const KEEPALIVE_AGE: Duration = Duration::from_secs(7 * 86_400);

/// Runs every job that has a schedule (`schedule` or `every`), never two runs of one job at once,
/// delivers the outbox (what `sendmail` and the relay queued), serves the relay when [relay] is
/// configured, and keeps rarely used grants alive. SIGHUP reloads the configuration; SIGTERM or SIGINT stop
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
    /// An invalid configuration at start, signal handlers that cannot be installed, or a
    /// `[relay]` listener that cannot be bound.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        serve(ctx, Mode::Everything).await
    }
}

/// What a long-running mailpilot does besides delivering the outbox and keeping grants alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `daemon`: scheduled jobs, and the relay when `[relay]` is configured.
    Everything,
    /// `relay`: the relay only (no jobs).
    RelayOnly,
}

/// The daemon's loop: jobs (unless relay-only), the relay's listener, the outbox's delivery (at
/// once when the relay queued a message, else every second), keep-alives; until SIGTERM/SIGINT.
///
/// # Errors
/// As [`Args::run`]; `relay` without a `[relay]` table.
pub(crate) async fn serve(ctx: &Ctx, mode: Mode) -> Result<Exit> {
    let config = load(ctx)?;
    if mode == Mode::RelayOnly && config.relay.is_none() {
        return Err(crate::error::UsageError(format!(
            "{} has no [relay] table: add one with a user (`mailpilot relay passwd NAME` prints its table)",
            config.path.display()
        ))
        .into());
    }
    let mut signals = signals()?;
    let relay = super::relay::start(ctx, &config)?;
    let queued = relay.as_ref().map(crate::relay::Handle::queued);
    let next = match mode {
        Mode::Everything => plan(&config, ctx.clock.now()),
        Mode::RelayOnly => BTreeMap::new(),
    };
    if mode == Mode::Everything {
        ctx.out.info(&format!(
            "daemon started: {} scheduled job{}",
            next.len(),
            if next.len() == 1 { "" } else { "s" }
        ));
    }
    let mut daemon = Daemon {
        ctx,
        mode,
        config,
        next,
        next_keepalive: ctx.clock.now(),
        outbox_checked: false,
        sessions: Sessions::default(),
        relay,
    };
    loop {
        if daemon.run_due(&mut signals).await == Flow::Stop {
            break;
        }
        daemon.drain_outbox().await;
        let sleep = daemon.time_to_next().min(OUTBOX_CHECK);
        let queued = queued.clone();
        let relayed = async move {
            match queued {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = relayed => {}
            sig = signals.recv() => match sig {
                Some(Signal::Reload) => daemon.reload(),
                Some(Signal::Stop) | None => break,
            },
        }
    }
    daemon.sessions.close().await;
    ctx.out.info(match mode {
        Mode::Everything => "daemon stopping",
        Mode::RelayOnly => "relay stopping",
    });
    Ok(Exit::Success)
}

/// Forwards SIGTERM and SIGINT (stop) and SIGHUP (reload) into one channel.
fn signals() -> Result<tokio::sync::mpsc::UnboundedReceiver<Signal>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut term =
        signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
    let mut int =
        signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("failed to install the SIGHUP handler")?;
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
    Ok(rx)
}

/// Whether the daemon goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The daemon's clock: the configuration it runs, each job's next run, the next keep-alive.
struct Daemon<'a> {
    ctx: &'a Ctx,
    mode: Mode,
    config: Config,
    next: BTreeMap<String, u64>,
    next_keepalive: u64,
    /// Whether the outbox was tried since start (the first time, every queued message is tried,
    /// whatever its backoff: the daemon may start because the server is back).
    outbox_checked: bool,
    /// SMTP sessions kept between drains (a stream of relayed messages goes over one).
    sessions: Sessions,
    /// The relay, when `[relay]` is configured.
    relay: Option<crate::relay::Handle>,
}

impl Daemon<'_> {
    /// Runs the keep-alive if it is due, then every due job in order of due time. A stop signal
    /// is honoured between jobs; a reload waits until the due jobs have run.
    async fn run_due(
        &mut self,
        signals: &mut tokio::sync::mpsc::UnboundedReceiver<Signal>,
    ) -> Flow {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        if now >= self.next_keepalive {
            keep_alive(ctx, &self.config).await;
            self.next_keepalive = now + KEEPALIVE_CHECK.as_secs();
        }
        let mut due: Vec<(u64, String)> = self
            .next
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, t)| (*t, n.clone()))
            .collect();
        due.sort();
        let mut reload_requested = false;
        for (_, name) in due {
            match signals.try_recv() {
                Ok(Signal::Stop) => return Flow::Stop,
                Ok(Signal::Reload) => reload_requested = true,
                Err(_) => {}
            }
            let Some(job) = self.config.jobs.get(&name) else {
                continue;
            };
            run_one(ctx, job).await;
            if let Some(schedule) = &job.schedule {
                // Planned from the end of the run: a slow run is never overlapped.
                if let Some(t) = next_run(schedule, ctx.clock.now()) {
                    self.next.insert(name.clone(), t);
                }
            }
        }
        if reload_requested {
            self.reload();
        }
        Flow::Continue
    }

    /// Delivers what is due in the outbox (retries back off per message: 1, 2, 4… minutes).
    async fn drain_outbox(&mut self) {
        let outbox = match self.ctx.outbox() {
            Ok(outbox) => outbox,
            Err(e) => {
                self.ctx
                    .out
                    .warn(&format!("outbox: {}", error_text(e.as_ref())));
                return;
            }
        };
        self.pick_up(&outbox).await;
        let force = !std::mem::replace(&mut self.outbox_checked, true);
        let drained =
            super::queue::drain(self.ctx, &self.config, &outbox, force, &mut self.sessions).await;
        self.sessions.close_idle().await;
        if let Err(e) = drained {
            self.ctx
                .out
                .warn(&format!("outbox: {}", error_text(e.as_ref())));
        }
    }

    /// Moves what other users' `sendmail` left in the drop directory into the outbox, when this
    /// daemon's user owns that directory.
    async fn pick_up(&self, outbox: &crate::outbox::Outbox) {
        let Some(dir) = &self.config.sendmail.drop_dir else {
            return;
        };
        let drop = crate::outbox::MailDrop::new(dir);
        if !dir.is_dir() || drop.is_for_this_user() {
            return;
        }
        let account = match &self.config.sendmail.account {
            Some(a) => a.clone(),
            None => match self.config.accounts.keys().collect::<Vec<_>>().as_slice() {
                [only] => (*only).clone(),
                _ => return,
            },
        };
        match drop.pick_up(outbox, &account).await {
            Ok(picked) => {
                for (name, why) in picked.bad {
                    self.ctx.out.warn(&format!(
                        "{}: {name}.drop is not a message ({why}); renamed {name}.bad",
                        dir.display()
                    ));
                }
            }
            Err(e) => self
                .ctx
                .out
                .warn(&format!("drop directory: {}", error_text(e.as_ref()))),
        }
    }

    /// How long to sleep until the next job or keep-alive (at most [`KEEPALIVE_CHECK`]).
    fn time_to_next(&self) -> Duration {
        let wake = self
            .next
            .values()
            .min()
            .copied()
            .unwrap_or(u64::MAX)
            .min(self.next_keepalive);
        Duration::from_secs(wake.saturating_sub(self.ctx.clock.now())).min(KEEPALIVE_CHECK)
    }

    /// Re-reads the configuration; a broken file is reported and the old configuration kept.
    fn reload(&mut self) {
        let ctx = self.ctx;
        match load(ctx) {
            Ok(c) => {
                self.config = c;
                self.outbox_checked = false;
                if self.mode == Mode::Everything {
                    self.next = plan(&self.config, ctx.clock.now());
                }
                if let Some(relay) = &self.relay {
                    relay.reload(&self.config);
                }
                ctx.out.info(&format!(
                    "configuration reloaded: {} scheduled jobs",
                    self.next.len()
                ));
            }
            Err(e) => ctx.out.warn(&format!(
                "configuration not reloaded, keeping the old one: {}",
                error_text(e.as_ref())
            )),
        }
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
    let outcome = exit.word();
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
    // An app's grant cannot go idle; only people's refresh tokens need the keep-alive.
    for account in config.accounts.values().filter(|a| a.grant.needs_person()) {
        let Ok(Some(token)) = store.load(&account.name).await else {
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

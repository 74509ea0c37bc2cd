//! `mailpilot watch`: a long-running poll that waits in IMAP IDLE.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::poll::Common;
use super::Ctx;
use crate::exit::Exit;
use crate::oauth::TokenSource;
use crate::poll::{Poller, WatchOptions};

/// Watches a mailbox and handles each new message like `poll` as soon as it arrives (IMAP IDLE).
/// Reconnects with a fresh token before the token expires, and with backoff when the connection
/// drops; polls once after every reconnect. SIGTERM or SIGINT stop it after the message in hand.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Do not use IDLE; check for new mail every --poll-interval
    #[arg(long)]
    no_idle: bool,
    /// How often to check without IDLE (also used when the server lacks IDLE)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
}

impl Args {
    /// Runs until SIGTERM/SIGINT.
    ///
    /// # Errors
    /// As `poll`, except that network trouble is retried instead of returned.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = ctx.pick_account(&config, self.common.account())?;
        let options = self.common.options()?;
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut term =
            signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = stop_tx.send(true);
        });
        ctx.out.info(&format!(
            "watching {} of account \"{}\" (stop with Ctrl-C or SIGTERM)",
            options.mailbox, account.name
        ));
        let settings = WatchOptions {
            idle: !self.no_idle,
            poll_interval: self.poll_interval,
        };
        let home = ctx.state_home()?;
        let clock = ctx.clock.as_ref();
        let poller = Poller::new(account, &tokens, &home, &options, &ctx.out, clock);
        let summary = poller.watch(settings, stop_rx).await?;
        ctx.out.info(&format!(
            "stopped; {} message{} handled",
            summary.handled,
            if summary.handled == 1 { "" } else { "s" }
        ));
        Ok(Exit::Success)
    }
}

//! `mailpilot schedule print-cron | print-systemd NAME`: run jobs from cron or systemd.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Ctx;
use crate::exit::Exit;
use crate::schedule::{crontab_line, daemon_unit, systemd_units};

/// The `schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Print a crontab line for every scheduled job (absolute paths)
    PrintCron {
        /// The mailpilot binary to call [default: this one]
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
    },
    /// Print a systemd service and timer for job NAME, or with --daemon the hardened system unit
    /// of `mailpilot daemon` (absolute paths)
    PrintSystemd {
        /// Job name
        #[arg(required_unless_present = "daemon")]
        name: Option<String>,
        /// The system service running `mailpilot daemon` (the Debian package's mailpilot.service)
        #[arg(long, conflicts_with = "name")]
        daemon: bool,
        /// The mailpilot binary to call [default: this one]
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
    },
}

impl ScheduleCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// Bad configuration, an unknown job, or a schedule with no cron/systemd form.
    pub fn run(self, ctx: &Ctx) -> Result<Exit> {
        let bin = |given: Option<PathBuf>| -> Result<PathBuf> {
            match given {
                Some(b) => Ok(b),
                None => std::env::current_exe().context("failed to find this program's path"),
            }
        };
        if let ScheduleCommand::PrintSystemd {
            daemon: true,
            bin: given,
            ..
        } = self
        {
            // The unit names the configuration; the file need not exist yet (a package build).
            let path = ctx.config_path()?;
            let path = std::path::absolute(&path)
                .with_context(|| format!("failed to resolve {}", path.display()))?;
            ctx.out.data("# /etc/systemd/system/mailpilot.service")?;
            ctx.out.data(&daemon_unit(&bin(given)?, &path))?;
            return Ok(Exit::Success);
        }
        let config = ctx.config()?;
        let config_path = std::path::absolute(&config.path)
            .with_context(|| format!("failed to resolve {}", config.path.display()))?;
        match self {
            ScheduleCommand::PrintCron { bin: given } => {
                let bin = bin(given)?;
                ctx.out.data("# mailpilot jobs (crontab -e); runs use the config below, -q keeps cron mail to errors")?;
                for job in config.jobs.values().filter(|j| j.schedule.is_some()) {
                    match crontab_line(job, &bin, &config_path) {
                        Ok(line) => ctx.out.data(&line)?,
                        Err(e) => ctx.out.data(&format!("# {e:#}"))?,
                    }
                }
            }
            ScheduleCommand::PrintSystemd {
                name, bin: given, ..
            } => {
                let name = name.unwrap_or_default();
                let job = super::run::find(&config, &name)?;
                let (service, timer) = systemd_units(job, &bin(given)?, &config_path)?;
                ctx.out.data(&format!(
                    "# ~/.config/systemd/user/mailpilot-{name}.service\n{service}"
                ))?;
                ctx.out.data(&format!(
                    "# ~/.config/systemd/user/mailpilot-{name}.timer\n{timer}"
                ))?;
                ctx.out.data(&format!("# enable with: systemctl --user daemon-reload && systemctl --user enable --now mailpilot-{name}.timer"))?;
            }
        }
        Ok(Exit::Success)
    }
}

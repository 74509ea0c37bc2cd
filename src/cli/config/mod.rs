//! `mailpilot config …`: inspect the configuration.

mod check;

use anyhow::Result;
use clap::Subcommand;

use super::Ctx;
use crate::exit::Exit;

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it resolved (presets applied, secrets redacted)
    Check(check::Args),
}

impl ConfigCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// As the subcommand.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        match self {
            ConfigCommand::Check(args) => args.run(ctx).await,
        }
    }
}

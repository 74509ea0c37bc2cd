//! `mailpilot auth …`: manage OAuth2 grants.

mod import;
mod logout;
mod refresh;
mod status;
mod token;

use anyhow::Result;
use clap::Subcommand;

use super::Ctx;
use crate::exit::Exit;

/// The `auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Store a refresh token obtained elsewhere (read from stdin, never from the command line)
    Import(import::Args),
    /// Print a valid access token (or SASL string), refreshing only when needed
    Token(token::Args),
    /// Show each account's grant: tokens, ages, last refresh, last error
    Status(status::Args),
    /// Refresh now, if needed, or if older than a given age (keep-alive for timers)
    Refresh(refresh::Args),
    /// Delete an account's stored tokens
    Logout(logout::Args),
}

impl AuthCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// As the subcommand.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        match self {
            AuthCommand::Import(args) => args.run(ctx).await,
            AuthCommand::Token(args) => args.run(ctx).await,
            AuthCommand::Status(args) => args.run(ctx),
            AuthCommand::Refresh(args) => args.run(ctx).await,
            AuthCommand::Logout(args) => args.run(ctx).await,
        }
    }
}

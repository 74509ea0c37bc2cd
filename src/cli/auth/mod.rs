//! `mailpilot auth …`: manage OAuth2 grants.

mod import;
mod login;
mod logout;
mod refresh;
mod revoke;
mod status;
mod test;
mod token;

use anyhow::Result;
use clap::Subcommand;

use super::Ctx;
use crate::exit::Exit;

/// Refuses a person's sign-in (`login`, `import`) for an account whose app gets its own tokens.
///
/// # Errors
/// [`crate::error::UsageError`] saying why none is needed.
pub(crate) fn require_person(account: &crate::config::Account, command: &str) -> Result<()> {
    if account.grant.needs_person() {
        return Ok(());
    }
    Err(crate::error::UsageError(format!(
        "account \"{}\" uses grant = \"{}\": the app gets its own tokens with its credentials, so nobody signs in and no refresh token is kept (`auth {command}` is not needed); `mailpilot auth test {}` checks the app's access",
        account.name, account.grant, account.name
    ))
    .into())
}

/// The `auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign in (browser with loopback redirect, --paste for headless hosts, or --device)
    Login(login::Args),
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
    /// Log in to the account's SMTP and IMAP servers and report each result
    Test(test::Args),
    /// Revoke the grant at the provider (Google) and delete the stored tokens
    Revoke(revoke::Args),
}

impl AuthCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// As the subcommand.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        match self {
            AuthCommand::Login(args) => args.run(ctx).await,
            AuthCommand::Import(args) => args.run(ctx).await,
            AuthCommand::Token(args) => args.run(ctx).await,
            AuthCommand::Status(args) => args.run(ctx).await,
            AuthCommand::Refresh(args) => args.run(ctx).await,
            AuthCommand::Logout(args) => args.run(ctx).await,
            AuthCommand::Test(args) => args.run(ctx).await,
            AuthCommand::Revoke(args) => args.run(ctx).await,
        }
    }
}

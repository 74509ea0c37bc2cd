//! `mailpilot auth import ACCOUNT`: seed a grant from a refresh token on stdin.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::Ctx;
use crate::clock::span;
use crate::error::UsageError;
use crate::exit::Exit;
use crate::oauth::TokenSource;
use crate::output::JSON_SCHEMA_VERSION;
use crate::secret::Secret;

/// Refresh tokens are a few hundred bytes to a few KB; more than this on stdin is a mistake.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Reads a refresh token from stdin, proves it with one refresh, and stores both tokens.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account name from the configuration
    account: String,
}

#[derive(Serialize)]
struct Imported<'a> {
    version: u32,
    account: &'a str,
    expires_at: u64,
    scope: Option<&'a str>,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Empty stdin, unknown account, or the proving refresh fails (nothing is stored then).
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = config.account(&self.account)?;
        super::require_person(account, "import")?;
        let refresh_token = read_token(ctx)?;
        let store = ctx.store()?;
        let token = TokenSource::new(account, &store, ctx.clock.as_ref())
            .import(refresh_token)
            .await?;
        if ctx.out.is_json() {
            ctx.out.json(&Imported {
                version: JSON_SCHEMA_VERSION,
                account: &account.name,
                expires_at: token.expires_at,
                scope: token.scope.as_deref(),
            })?;
        }
        ctx.out.info(&format!(
            "stored the grant of account \"{}\" in {} (access token valid for {})",
            account.name,
            store.place(&account.name),
            span(u64::try_from(token.remaining(ctx.clock.now())).unwrap_or(0)),
        ));
        Ok(Exit::Success)
    }
}

fn read_token(ctx: &Ctx) -> Result<Secret> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        ctx.out.info("paste the refresh token, then press Enter:");
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .context("failed to read the refresh token from the terminal")?;
        return non_empty(line);
    }
    let mut text = String::new();
    stdin
        .lock()
        .take(MAX_TOKEN_BYTES)
        .read_to_string(&mut text)
        .context("failed to read the refresh token from stdin")?;
    non_empty(text)
}

fn non_empty(text: String) -> Result<Secret> {
    let token = text.trim();
    if token.is_empty() {
        return Err(UsageError(
            "no refresh token on stdin (pipe it in: `mailpilot auth import ACCOUNT < file`)".into(),
        )
        .into());
    }
    if token.contains(char::is_whitespace) {
        return Err(UsageError(
            "stdin holds more than one word; give only the refresh token".into(),
        )
        .into());
    }
    Ok(Secret::new(token))
}

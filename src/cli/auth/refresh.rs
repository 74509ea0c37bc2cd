//! `mailpilot auth refresh [ACCOUNT]`: refresh now, when needed, or when older than an age — the
//! keep-alive a weekly timer runs so rarely used grants do not expire from inactivity.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::clock::span;
use crate::config::Account;
use crate::error::error_text;
use crate::exit::{classify, Exit};
use crate::oauth::{Fetch, Store, TokenSource, TokenStore};
use crate::output::{report_error, JSON_SCHEMA_VERSION};

/// Refreshes one account's token, or every account that has a stored grant.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this account [default: every account with a stored grant]
    account: Option<String>,
    /// Refresh even if the access token is still valid
    #[arg(long, conflicts_with = "if_older_than")]
    force: bool,
    /// Refresh only if the last refresh is older than this (e.g. 7d, 12h)
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    if_older_than: Option<Duration>,
}

#[derive(Serialize)]
struct RefreshJson {
    version: u32,
    accounts: Vec<Outcome>,
}

#[derive(Serialize)]
struct Outcome {
    account: String,
    result: RefreshResult,
    expires_at: Option<u64>,
    error: Option<String>,
    exit_code: u8,
}

/// What `auth refresh` did for one account (`--json` spells it in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum RefreshResult {
    /// This process refreshed the token.
    Refreshed,
    /// Not needed: the token is still fresh.
    Fresh,
    /// Another process refreshed it while this one waited for the lock.
    Adopted,
    /// `--if-older-than` was not reached.
    Skipped,
    /// The refresh failed.
    Error,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// With one account, its failure; with several, failures are reported per account and the
    /// worst exit status is returned.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let store = ctx.store()?;
        let accounts: Vec<&Account> = match &self.account {
            Some(name) => vec![config.account(name)?],
            None => {
                let mut with_grant = Vec::new();
                for account in config.accounts.values() {
                    if store.load(&account.name).await?.is_some() {
                        with_grant.push(account);
                    }
                }
                with_grant
            }
        };
        if accounts.is_empty() {
            ctx.out
                .info("no account has a stored grant; nothing to refresh");
        }
        let mut outcomes = Vec::new();
        let mut worst = Exit::Success;
        for account in accounts {
            let outcome = match self.refresh_one(ctx, account, &store).await {
                Ok(outcome) => outcome,
                Err(e) if self.account.is_some() => return Err(e),
                Err(e) => {
                    report_error(&e);
                    let exit = classify(&e);
                    worst = worst.worst(exit);
                    Outcome {
                        account: account.name.clone(),
                        result: RefreshResult::Error,
                        expires_at: None,
                        error: Some(error_text(e.as_ref())),
                        exit_code: exit.code(),
                    }
                }
            };
            outcomes.push(outcome);
        }
        if ctx.out.is_json() {
            ctx.out.json(&RefreshJson {
                version: JSON_SCHEMA_VERSION,
                accounts: outcomes,
            })?;
        }
        Ok(worst)
    }

    async fn refresh_one(&self, ctx: &Ctx, account: &Account, store: &Store) -> Result<Outcome> {
        let now = ctx.clock.now();
        let source = TokenSource::new(account, store, ctx.clock.as_ref());
        let fetch = match self.if_older_than {
            Some(age) => {
                let current = source.access_token(Fetch::IfNeeded).await?;
                let since = now.saturating_sub(current.token.refreshed_at);
                if current.refreshed || since < age.as_secs() {
                    ctx.out.info(&format!(
                        "{}: last refreshed {} ago; not refreshing",
                        account.name,
                        span(since)
                    ));
                    return Ok(self.outcome(
                        account,
                        RefreshResult::Skipped,
                        current.token.expires_at,
                    ));
                }
                Fetch::Force
            }
            None if self.force => Fetch::Force,
            None => Fetch::IfNeeded,
        };
        let obtained = source.access_token(fetch).await?;
        let left = span(u64::try_from(obtained.token.remaining(ctx.clock.now())).unwrap_or(0));
        let result = match (obtained.refreshed, fetch) {
            (true, _) => RefreshResult::Refreshed,
            (false, Fetch::Force) => RefreshResult::Adopted,
            (false, Fetch::IfNeeded) => RefreshResult::Fresh,
        };
        let message = match result {
            RefreshResult::Refreshed => {
                format!("{}: refreshed; access token valid for {left}", account.name)
            }
            RefreshResult::Adopted => format!(
                "{}: another process just refreshed it; access token valid for {left}",
                account.name
            ),
            RefreshResult::Fresh | RefreshResult::Skipped | RefreshResult::Error => format!(
                "{}: access token still valid for {left}; not refreshing (use --force)",
                account.name
            ),
        };
        ctx.out.info(&message);
        Ok(self.outcome(account, result, obtained.token.expires_at))
    }

    fn outcome(&self, account: &Account, result: RefreshResult, expires_at: u64) -> Outcome {
        Outcome {
            account: account.name.clone(),
            result,
            expires_at: Some(expires_at),
            error: None,
            exit_code: 0,
        }
    }
}

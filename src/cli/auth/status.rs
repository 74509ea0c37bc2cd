//! `mailpilot auth status [ACCOUNT]`: the state of each grant, without network access.

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::clock::{rfc3339, span};
use crate::config::{Account, Grant, Spelled};
use crate::error::error_text;
use crate::exit::Exit;
use crate::oauth::{LastError, Store, StoredToken, TokenStore};
use crate::output::JSON_SCHEMA_VERSION;

/// Shows, per account: whether a refresh token is stored, when the access token expires, the
/// refresh token's age, the last refresh and the last refresh error. Makes no network request.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this account [default: all configured accounts]
    account: Option<String>,
}

#[derive(Serialize)]
struct StatusJson {
    version: u32,
    accounts: Vec<AccountStatus>,
}

/// One account in `auth status --json` (schema version 1).
#[derive(Serialize)]
struct AccountStatus {
    account: String,
    provider: &'static str,
    /// `authorization_code` (a person's grant) or `client_credentials` (the app's own).
    grant: &'static str,
    email: String,
    has_refresh_token: bool,
    /// Seconds until the access token expires; negative once expired.
    access_token_expires_in: Option<i64>,
    access_token_expires_at: Option<u64>,
    refresh_token_age: Option<u64>,
    last_refresh: Option<u64>,
    last_error: Option<LastError>,
    /// Set when the token file itself cannot be read.
    store_error: Option<String>,
    /// When the app's client certificate expires (unix seconds), for certificate credentials.
    certificate_expires_at: Option<u64>,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Bad configuration or an unknown account name.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let accounts: Vec<&Account> = match &self.account {
            Some(name) => vec![config.account(name)?],
            None => config.accounts.values().collect(),
        };
        let store = ctx.store()?;
        let now = ctx.clock.now();
        let mut rows: Vec<AccountStatus> = Vec::new();
        for account in accounts {
            rows.push(status(account, &store, now).await);
        }
        if ctx.out.is_json() {
            ctx.out.json(&StatusJson {
                version: JSON_SCHEMA_VERSION,
                accounts: rows,
            })?;
            return Ok(Exit::Success);
        }
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                ctx.out.data("")?;
            }
            for line in human(row, now) {
                ctx.out.data(&line)?;
            }
        }
        Ok(Exit::Success)
    }
}

async fn status(account: &Account, store: &Store, now: u64) -> AccountStatus {
    let mut row = AccountStatus {
        account: account.name.clone(),
        provider: account.provider.name(),
        grant: account.grant.name(),
        email: account.email.clone(),
        has_refresh_token: false,
        access_token_expires_in: None,
        access_token_expires_at: None,
        refresh_token_age: None,
        last_refresh: None,
        last_error: None,
        store_error: None,
        certificate_expires_at: None,
    };
    if let Some(c) = &account.client_certificate {
        match crate::oauth::assertion::certificate_expiry(&c.certificate) {
            Ok(at) => row.certificate_expires_at = Some(at),
            Err(e) => row.store_error = Some(error_text(e.as_ref())),
        }
    }
    match store.load(&account.name).await {
        Ok(Some(token)) => fill(&mut row, &token, now),
        Ok(None) => {}
        Err(e) => row.store_error = Some(error_text(e.as_ref())),
    }
    match store.last_error(&account.name).await {
        Ok(last) => row.last_error = last,
        Err(e) => row.store_error = Some(error_text(e.as_ref())),
    }
    row
}

fn fill(row: &mut AccountStatus, token: &StoredToken, now: u64) {
    row.has_refresh_token = !token.refresh_token.is_empty();
    row.access_token_expires_in = Some(token.remaining(now));
    row.access_token_expires_at = Some(token.expires_at);
    row.refresh_token_age = Some(token.refresh_token_age(now));
    row.last_refresh = Some(token.refreshed_at);
}

fn ago(at: u64, now: u64) -> String {
    format!("{} ({} ago)", rfc3339(at), span(now.saturating_sub(at)))
}

fn human(row: &AccountStatus, now: u64) -> Vec<String> {
    let mut lines = vec![format!("{} ({}, {})", row.account, row.provider, row.email)];
    let field = |name: &str, value: String| format!("  {:<15} {value}", format!("{name}:"));
    if let Some(e) = &row.store_error {
        lines.push(field("token file", format!("unreadable: {e}")));
    }
    if row.grant == Grant::ClientCredentials.name() {
        lines.push(field(
            "identity",
            "the app itself (client credentials): no sign-in, no refresh token".into(),
        ));
    } else if row.grant == Grant::ServiceAccount.name() {
        lines.push(field(
            "identity",
            "a service account acting for this user (domain-wide delegation): no sign-in, no refresh token".into(),
        ));
    } else {
        let refresh = match (row.has_refresh_token, row.refresh_token_age) {
            (true, Some(age)) => format!("stored, obtained {} ago", span(age)),
            _ => "none (run `mailpilot auth import ...`)".into(),
        };
        lines.push(field("refresh token", refresh));
    }
    if let (Some(left), Some(at)) = (row.access_token_expires_in, row.access_token_expires_at) {
        let value = if left > 0 {
            format!(
                "valid for {} (until {})",
                span(left.unsigned_abs()),
                rfc3339(at)
            )
        } else {
            format!(
                "expired {} ago (refreshed on next use)",
                span(left.unsigned_abs())
            )
        };
        lines.push(field("access token", value));
    }
    if let Some(at) = row.certificate_expires_at {
        let value = if at > now {
            format!("valid until {} (in {})", rfc3339(at), span(at - now))
        } else {
            format!("EXPIRED {} ago: upload a new one", span(now - at))
        };
        lines.push(field("certificate", value));
    }
    if let Some(at) = row.last_refresh {
        lines.push(field("last refresh", ago(at, now)));
    }
    let error = match &row.last_error {
        Some(e) => format!("{} [{}] {}", ago(e.at, now), e.kind, e.message),
        None => "none".into(),
    };
    lines.push(field("last error", error));
    lines
}

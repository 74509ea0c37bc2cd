//! `mailpilot auth revoke ACCOUNT`: end the grant at the provider, then forget it here.

use anyhow::{bail, Context, Result};

use crate::cli::Ctx;
use crate::error::{clean, AuthError, SERVER_TEXT_MAX};
use crate::exit::Exit;
use crate::oauth::http::{self, Endpoint};
use crate::oauth::TokenStore;

/// Revokes the grant at the provider's revocation endpoint (Google has one) and deletes the
/// stored tokens. Where the provider has none (Microsoft), says how to revoke it there.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account name from the configuration
    account: String,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// No grant stored, no revocation endpoint, or the endpoint refuses.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = config.account(&self.account)?;
        if !account.grant.needs_person() {
            bail!(
                "account \"{}\" uses the app's own credentials: there is no user grant to revoke; to end the app's access, delete its client secret (or the app registration) at the provider, then run `mailpilot auth logout {}` to forget cached tokens",
                account.name,
                account.name
            );
        }
        let store = ctx.store()?;
        let Some(token) = store.load(&account.name)? else {
            bail!("account \"{}\" has no stored grant to revoke", account.name);
        };
        let Some(url) = &account.endpoints.revoke_url else {
            bail!(
                "{} has no token revocation endpoint: remove the app's access in the account's settings (Microsoft: https://myapplications.microsoft.com, or an administrator revokes the user's sessions), then run `mailpilot auth logout {}`",
                account.provider.name(),
                account.name
            );
        };
        let endpoint = Endpoint::new(account)?;
        let form = [("token", token.refresh_token.expose())];
        let (status, body) =
            endpoint
                .post_form(url, &form)
                .await
                .map_err(|e| AuthError::Transient {
                    account: account.name.clone(),
                    reason: format!("the request to {url} failed"),
                    source: Some(http::cause(e)),
                })?;
        if !(200..300).contains(&status) {
            bail!(
                "{url} refused to revoke the grant (HTTP {status}): {}",
                clean(body.lines().next().unwrap_or_default(), SERVER_TEXT_MAX)
            );
        }
        store
            .delete(&account.name)
            .context("the grant was revoked, but deleting the local tokens failed")?;
        ctx.out.info(&format!(
            "revoked the grant of account \"{}\" at {url} and deleted its stored tokens",
            account.name
        ));
        Ok(Exit::Success)
    }
}

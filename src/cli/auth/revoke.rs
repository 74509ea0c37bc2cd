//! `mailpilot auth revoke ACCOUNT`: end the grant at the provider, then forget it here.

use anyhow::{bail, Context, Result};

use crate::cli::Ctx;
use crate::exit::Exit;
use crate::oauth::{Refresher, TokenSource, TokenStore};

/// Revokes the grant at the provider's revocation endpoint (RFC 7009: the refresh token, the
/// client authenticated as at the token endpoint; Google has one) and deletes the stored tokens. Where the provider has none (Microsoft), says how to revoke it there.
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
        let Some(token) = store.load(&account.name).await? else {
            bail!("account \"{}\" has no stored grant to revoke", account.name);
        };
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let server = tokens.server().await?;
        let Some(url) = server.revoke_url.clone() else {
            bail!(
                "{} has no token revocation endpoint: remove the app's access in the account's settings (Microsoft: https://myapplications.microsoft.com, or an administrator revokes the user's sessions), then run `mailpilot auth logout {}`",
                account.provider.name(),
                account.name
            );
        };
        let secret = tokens.client_secret()?;
        Refresher::new(account, server)?
            .revoke(&url, &token.refresh_token, secret.as_ref())
            .await?;
        store
            .delete(&account.name)
            .await
            .context("the grant was revoked, but deleting the local tokens failed")?;
        ctx.out.info(&format!(
            "revoked the grant of account \"{}\" at {url} and deleted its stored tokens",
            account.name
        ));
        Ok(Exit::Success)
    }
}

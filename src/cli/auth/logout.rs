//! `mailpilot auth logout ACCOUNT`: forget an account's tokens.

use anyhow::Result;
use std::time::Duration;

use crate::cli::Ctx;
use crate::exit::Exit;
use crate::oauth::source::wait_for_lock;
use crate::oauth::TokenStore;

/// How long logout waits for a running refresh to finish before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Deletes the stored tokens of an account. The grant stays valid at the provider until it is
/// revoked there (for Google: myaccount.google.com → Security → Third-party access).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account name from the configuration
    account: String,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Unknown account, a lock held too long, or a filesystem error.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = config.account(&self.account)?;
        // Deleting needs no key: a grant sealed with a lost key can still be forgotten.
        let store = ctx.unsealed_store()?;
        // Wait for a refresh in progress, so it cannot write the grant back after we delete it.
        let _lock = wait_for_lock(&store, &account.name, LOCK_WAIT).await?;
        if store.delete(&account.name).await? {
            ctx.out.info(&format!(
                "deleted the stored tokens of account \"{}\" (the grant stays valid at the provider until revoked there)",
                account.name
            ));
        } else {
            ctx.out.info(&format!(
                "account \"{}\" had no stored tokens",
                account.name
            ));
        }
        Ok(Exit::Success)
    }
}

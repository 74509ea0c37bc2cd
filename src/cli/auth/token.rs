//! `mailpilot auth token ACCOUNT`: a valid access token for other programs (msmtp `passwordeval`,
//! mbsync `PassCmd`, curl).

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use crate::cli::Ctx;
use crate::config::Protocol;
use crate::exit::Exit;
use crate::oauth::{Fetch, TokenSource};
use crate::output::JSON_SCHEMA_VERSION;
use crate::sasl;

/// Prints a valid access token to stdout, refreshing it only when it is about to expire.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account name from the configuration
    account: String,
    /// Print the base64 SASL initial response for this mechanism instead of the bare token
    #[arg(long, value_enum, value_name = "MECHANISM")]
    sasl: Option<SaslMechanism>,
    /// Server whose host and port go into an OAUTHBEARER string
    #[arg(long, value_enum, default_value = "imap")]
    server: ServerKind,
    /// Refresh even if the stored token is still valid
    #[arg(long)]
    force: bool,
}

/// `--sasl` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SaslMechanism {
    Xoauth2,
    Oauthbearer,
}

/// `--server` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ServerKind {
    Smtp,
    Imap,
}

#[derive(Serialize)]
struct TokenJson<'a> {
    version: u32,
    account: &'a str,
    access_token: &'a str,
    expires_at: u64,
    refreshed: bool,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Unknown account, no grant, or a failed refresh.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = config.account(&self.account)?;
        let store = ctx.store()?;
        let fetch = if self.force {
            Fetch::Force
        } else {
            Fetch::IfNeeded
        };
        let obtained = TokenSource::new(account, &store, ctx.clock.as_ref())
            .access_token(fetch)
            .await?;
        let token = &obtained.token.access_token;
        let secret = match self.sasl {
            None => token.clone(),
            Some(SaslMechanism::Xoauth2) => sasl::xoauth2(&account.email, token),
            Some(SaslMechanism::Oauthbearer) => {
                let protocol = match self.server {
                    ServerKind::Smtp => Protocol::Smtp,
                    ServerKind::Imap => Protocol::Imap,
                };
                let server = account.server(protocol).ok();
                sasl::oauthbearer(
                    &account.email,
                    server.map(|s| (s.host.as_str(), s.port)),
                    token,
                )
            }
        };
        if ctx.out.is_json() {
            ctx.out.json(&TokenJson {
                version: JSON_SCHEMA_VERSION,
                account: &account.name,
                access_token: secret.expose(),
                expires_at: obtained.token.expires_at,
                refreshed: obtained.refreshed,
            })?;
        } else {
            // A token is printable ASCII; control characters from a hostile endpoint would reach
            // the terminal or the program reading this line.
            if secret.expose().chars().any(char::is_control) {
                anyhow::bail!(
                    "the access token of account \"{}\" contains control characters; refusing to print it (the token endpoint answered something that is not a token)",
                    account.name
                );
            }
            ctx.out.secret(&secret)?;
        }
        Ok(Exit::Success)
    }
}

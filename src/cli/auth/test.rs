//! `mailpilot auth test ACCOUNT`: log in to the account's servers and say how it went.

use anyhow::Result;

use crate::cli::Ctx;
use crate::config::{Protocol, Spelled};
use crate::error::error_text;
use crate::exit::{classify, Exit};
use crate::imap::Imap;
use crate::oauth::TokenSource;
use crate::smtp::Session;

/// Logs in to the account's SMTP and IMAP servers with its token and reports each result (with
/// the server's decoded reason on failure). Sends and reads nothing.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account name from the configuration
    account: String,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Bad configuration; login failures are reported per server and set the exit status.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = config.account(&self.account)?;
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let mut worst = Exit::Success;
        for &protocol in Protocol::ALL {
            let Ok(server) = account.server(protocol) else {
                continue;
            };
            let result = match protocol {
                Protocol::Smtp => match Session::open(account, &tokens).await {
                    Ok(session) => {
                        session.quit().await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Protocol::Imap => match Imap::open(account, &tokens).await {
                    Ok(imap) => {
                        imap.logout().await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            let label = format!(
                "{protocol} {} ({}, {})",
                server.address(),
                server.tls,
                server.mechanism
            );
            match result {
                Ok(()) => ctx.out.data(&format!("{label}: OK"))?,
                Err(e) => {
                    worst = worst.worst(classify(&e));
                    ctx.out
                        .data(&format!("{label}: FAILED: {}", error_text(e.as_ref())))?;
                }
            }
        }
        if account.smtp.is_none() && account.imap.is_none() {
            ctx.out.warn(&format!(
                "account \"{}\" has no [smtp] or [imap] server to test",
                account.name
            ));
        }
        Ok(worst)
    }
}

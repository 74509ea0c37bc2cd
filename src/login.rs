//! What SMTP and IMAP logins share: the server error type (whose variant decides the exit status)
//! and the rule "a token the server calls invalid is refreshed once and the login retried once;
//! never loop".

use std::future::Future;

use anyhow::{Context, Result};

use crate::config::Account;
use crate::oauth::{login_command, BoxError, Fetch, TokenSource, TokenStore};
use crate::sasl::Rejection;
use crate::secret::Secret;

/// Mail server failures a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A network failure, timeout, 4xx reply or temporary authentication failure: retry later
    /// (exit 75).
    #[error("{server}: {reason} (temporary; retry later)")]
    Transient {
        /// `host:port`.
        server: String,
        /// What happened.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The server refuses a freshly refreshed token: the grant does not give this account access
    /// (exit 77).
    #[error("{server} refused the login of account \"{account}\": {reason}")]
    LoginRefused {
        /// `host:port`.
        server: String,
        /// The account.
        account: String,
        /// The decoded server reason.
        reason: String,
        /// What to check.
        hint: String,
    },
    /// A permanent failure no retry fixes: 5xx, NO, TLS trust, protocol (exit 1).
    #[error("{server}: {reason}")]
    Failed {
        /// `host:port`.
        server: String,
        /// What happened.
        reason: String,
        /// What to check.
        hint: Option<String>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl ServerError {
    /// The fix, if one is known.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ServerError::Transient { .. } => None,
            ServerError::LoginRefused { hint, .. } => Some(hint),
            ServerError::Failed { hint, .. } => hint.as_deref(),
        }
    }
}

/// The account's `smtp` or `imap` server.
///
/// # Errors
/// [`crate::exit::UsageError`] when the account has none.
pub(crate) fn server<'a>(
    account: &'a Account,
    protocol: &str,
) -> Result<&'a crate::config::Server> {
    let server = if protocol == "smtp" {
        account.smtp.as_ref()
    } else {
        account.imap.as_ref()
    };
    server.ok_or_else(|| {
        crate::exit::UsageError(format!(
            "account \"{}\" has no {} server: add an [accounts.{}.{protocol}] table with host and port",
            account.name,
            protocol.to_uppercase(),
            account.name
        ))
        .into()
    })
}

/// Why one login attempt failed.
pub(crate) enum LoginFailure {
    /// The server refused the token: its decoded error challenge (if it sent one) and final reply.
    Rejected {
        /// The decoded challenge.
        challenge: Option<Rejection>,
        /// The final reply text.
        reply: String,
    },
    /// Anything else, already classified.
    Other(ServerError),
}

/// Logs in with a valid token; if the server says the token is invalid, forces one refresh and
/// tries once more. Returns the session and when a long session should reconnect with a fresh
/// token (unix seconds; see [`crate::oauth::StoredToken::renew_at`]).
///
/// `refused` builds the error for a refusal that does not blame the token (no challenge, or a
/// challenge with another status).
///
/// # Errors
/// [`ServerError`], or an [`crate::oauth::AuthError`] from the refresh under context naming the
/// server and its reason.
pub(crate) async fn with_one_refresh<S, T, F, Fut>(
    account: &Account,
    server: &str,
    tokens: &TokenSource<'_, S>,
    mut attempt: F,
    refused: impl FnOnce(Option<Rejection>, String) -> ServerError,
) -> Result<(T, u64)>
where
    S: TokenStore,
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, LoginFailure>>,
{
    let first = tokens.access_token(Fetch::IfNeeded).await?.token;
    let rejection = match attempt(first.access_token.clone()).await {
        Ok(session) => return Ok((session, first.renew_at(account.refresh_margin))),
        Err(LoginFailure::Other(e)) => return Err(e.into()),
        Err(LoginFailure::Rejected {
            challenge: Some(c), ..
        }) if c.token_invalid() => c,
        Err(LoginFailure::Rejected { challenge, reply }) => {
            return Err(refused(challenge, reply).into())
        }
    };
    tracing::info!(account = %account.name, server = %server, reason = %rejection, "server rejected the access token; refreshing it once");
    let fresh = tokens.access_token(Fetch::Force).await.with_context(|| {
        format!(
            "{server} rejected the access token of account \"{}\" ({rejection}), and refreshing it failed",
            account.name
        )
    })?;
    match attempt(fresh.token.access_token.clone()).await {
        Ok(session) => Ok((session, fresh.token.renew_at(account.refresh_margin))),
        Err(LoginFailure::Other(e)) => Err(e.into()),
        Err(LoginFailure::Rejected { challenge, reply }) => {
            let reason = challenge.map_or(reply, |c| c.to_string());
            Err(ServerError::LoginRefused {
                server: server.to_string(),
                account: account.name.clone(),
                reason: format!("a freshly refreshed token was rejected too ({reason})"),
                hint: format!(
                    "check that email = \"{}\" is the mailbox that granted access and that the grant includes the server's scope; then get a new grant with `{}`",
                    account.email,
                    login_command(&account.name)
                ),
            }
            .into())
        }
    }
}

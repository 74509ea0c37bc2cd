//! Logging in to a mail server with an OAuth2 token — what SMTP and IMAP share: the rule "a token
//! the server calls invalid is refreshed once and the login retried once; never loop", and the
//! error for a login refused for another reason.

use std::future::Future;

use anyhow::{Context, Result};

use crate::config::{Account, Protocol};
use crate::error::ServerError;
use crate::oauth::{login_command, Fetch, TokenSource, TokenStore};
use crate::sasl::Rejection;
use crate::secret::Secret;

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

/// The error for a login refused without a usable "token invalid" challenge (no challenge, or a
/// challenge with another status): a refresh would not help, so the account's settings are what
/// to check.
pub(crate) fn refused(
    account: &Account,
    protocol: Protocol,
    server: &str,
    challenge: Option<Rejection>,
    reply: &str,
) -> ServerError {
    let reason = match challenge {
        Some(c) => format!("login refused ({c}): {reply}"),
        None => format!("login refused: {reply}"),
    };
    ServerError::failed(server, reason).with_hint(format!(
        "check mechanism of [accounts.{}.{protocol}] and that the server accepts OAuth2 logins for {}",
        account.name, account.email
    ))
}

/// What to check when the server refuses even a fresh token: for a person, the mailbox and the
/// grant's scope (then sign in again); for an app, its access to the mailbox, which Exchange
/// Online grants in two PowerShell steps.
fn rejected_hint(account: &Account) -> String {
    if account.grant.needs_person() {
        return format!(
            "check that email = \"{}\" is the mailbox that granted access and that the grant includes the server's scope; then get a new grant with `{}`",
            account.email,
            login_command(&account.name)
        );
    }
    format!(
        "the app's token does not open mailbox {email}: Exchange Online needs the app's service principal and a mailbox permission — `New-ServicePrincipal -AppId {id} -ObjectId <enterprise application object id>`, then `Add-MailboxPermission -Identity {email} -User <service principal id> -AccessRights FullAccess` (SMTP also needs the SMTP.SendAsApp permission; IMAP needs IMAP.AccessAsApp)",
        email = account.email,
        id = account.client_id
    )
}

/// One login's fixed parts: whose, where, and how a refusal that does not blame the token reads.
pub(crate) struct Login<'a, R> {
    /// The account logging in.
    pub account: &'a Account,
    /// `host:port`.
    pub server: &'a str,
    /// Builds the error for a refusal that does not blame the token: the decoded challenge (if
    /// any) and the final reply.
    pub refused: R,
}

/// Logs in with a valid token; if the server says the token is invalid, forces one refresh and
/// tries once more. Returns the session and when a long session should reconnect with a fresh
/// token (unix seconds; see [`crate::oauth::StoredToken::renew_at`]).
///
/// # Errors
/// [`ServerError`], or an [`crate::error::AuthError`] from the refresh under context naming the
/// server and its reason.
pub(crate) async fn with_one_refresh<S, T, F, Fut, R>(
    login: Login<'_, R>,
    tokens: &TokenSource<'_, S>,
    mut attempt: F,
) -> Result<(T, u64)>
where
    S: TokenStore,
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, LoginFailure>>,
    R: FnOnce(Option<Rejection>, String) -> ServerError,
{
    let Login {
        account,
        server,
        refused,
    } = login;
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
            Err(ServerError::login_refused(
                server,
                &account.name,
                format!("a freshly refreshed token was rejected too ({reason})"),
                rejected_hint(account),
            )
            .into())
        }
    }
}

//! SMTP: connect (implicit TLS or STARTTLS, never AUTH in clear text off loopback), authenticate
//! with XOAUTH2 or OAUTHBEARER, send. The protocol itself is [`wire`].
//!
//! The AUTH exchange answers a server's error challenge (`334 <base64 JSON>`): it is decoded and
//! answered, the final 535/454 read, and a rejected token triggers exactly one forced refresh and
//! one retry. Every network step has a timeout.

pub mod wire;

use anyhow::Result;
use lettre::address::Envelope;

use crate::config::{Account, Protocol};
use crate::error::ServerError;
use crate::mail_auth::{self, Login, LoginFailure};
use crate::oauth::{TokenSource, TokenStore};
use crate::sasl::{self, Rejection};
use crate::secret::Secret;
use wire::{Conn, Reply};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. Longer AUTH lines
/// (Microsoft's 2.5 KB tokens) are sent as a bare `AUTH <mech>` and the response after `334`
/// (Dovecot submission rejects command lines over ~1 KB).
const MAX_COMMAND_LINE: usize = 512;

/// An authenticated SMTP connection.
pub struct Session {
    conn: Conn,
    /// When to reconnect with a fresh token (unix seconds), before this one expires.
    renew_at: u64,
}

impl Session {
    /// Connects to the account's SMTP server and logs in with a valid token, refreshing once if the
    /// server says the token is invalid.
    ///
    /// # Errors
    /// [`ServerError`] or an [`crate::error::AuthError`] (possibly under context naming the server).
    pub async fn open<S: TokenStore>(
        account: &Account,
        tokens: &TokenSource<'_, S>,
    ) -> Result<Session> {
        let server = account.server(Protocol::Smtp)?;
        let name = server.address();
        let login = Login {
            account,
            server: &name,
            refused: |challenge, reply: String| refused(account, &name, challenge, &reply),
        };
        let (conn, renew_at) = mail_auth::with_one_refresh(login, tokens, |token| async move {
            self::login(account, server, &token).await
        })
        .await?;
        Ok(Session { conn, renew_at })
    }

    /// Sends one message. Returns the server's final reply.
    ///
    /// # Errors
    /// [`ServerError`]: 4xx and network failures are transient, 5xx permanent (with a hint when the
    /// provider names the cause).
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Reply, ServerError> {
        self.conn
            .send(envelope, message)
            .await
            .map_err(with_refusal_hint)
    }

    /// The first half of sending: MAIL, RCPT and DATA (see [`Conn::envelope`]); a batch overlaps
    /// it with the previous message's journal fsync.
    ///
    /// # Errors
    /// As [`Session::send`].
    pub async fn envelope(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<(), ServerError> {
        self.conn
            .envelope(envelope, message)
            .await
            .map_err(with_refusal_hint)
    }

    /// The message, written (see [`Conn::data_sent`]); [`Session::data_reply`] reads its fate.
    ///
    /// # Errors
    /// As [`Session::send`].
    pub async fn data_sent(&mut self, message: &[u8]) -> Result<(), ServerError> {
        self.conn.data_sent(message).await
    }

    /// The server's final reply to the message written by [`Session::data_sent`].
    ///
    /// # Errors
    /// As [`Session::send`].
    pub async fn data_reply(&mut self) -> Result<Reply, ServerError> {
        self.conn.data_reply().await.map_err(with_refusal_hint)
    }

    /// Drops the connection without a word: a transaction in progress is abandoned (the server
    /// keeps nothing of it).
    pub fn abandon(&mut self) {
        self.conn.close();
    }

    /// Whether the connection can carry another message (a refusal after DATA closes it).
    pub fn is_usable(&self) -> bool {
        self.conn.is_usable()
    }

    /// Whether it is time to reconnect with a fresh token: a long batch never outlives its token.
    pub fn token_expiring(&self, now: u64) -> bool {
        now >= self.renew_at
    }

    /// `host:port`.
    pub fn server(&self) -> &str {
        self.conn.server()
    }

    /// Whether the server still answers (NOOP), before a kept session carries a message.
    ///
    /// # Errors
    /// The connection is gone or the server refused.
    pub async fn noop(&mut self) -> Result<(), ServerError> {
        let reply = self.conn.command("NOOP\r\n", "NOOP").await?;
        if reply.is_ok() {
            Ok(())
        } else {
            Err(reply.refused(self.conn.server(), "NOOP"))
        }
    }

    /// Ends the session politely; errors are ignored (the message is already accepted).
    pub async fn quit(self) {
        self.conn.quit().await;
    }
}

/// The error for a login refused without a usable "token invalid" challenge; Microsoft's "SMTP
/// AUTH is disabled" gets the admin setting as its hint.
fn refused(
    account: &Account,
    server: &str,
    challenge: Option<Rejection>,
    reply: &str,
) -> ServerError {
    let error = mail_auth::refused(account, Protocol::Smtp, server, challenge, reply);
    let disabled = reply.contains("5.7.139")
        || reply.contains("5.7.3 ")
        || reply.contains("SmtpClientAuthentication");
    if disabled {
        error.with_hint("Microsoft: SMTP AUTH is disabled for this mailbox or tenant; an admin must enable \"Authenticated SMTP\" (Exchange admin center → the mailbox → Email apps, or Set-CASMailbox -SmtpClientAuthenticationDisabled $false)")
    } else {
        error
    }
}

/// A permanent refusal with the fix its reply names, if it names one.
fn with_refusal_hint(e: ServerError) -> ServerError {
    let hint = match &e {
        ServerError::Failed { reason, .. } => refusal_hint(reason),
        _ => None,
    };
    match hint {
        Some(hint) => e.with_hint(hint),
        None => e,
    }
}

/// The fix for a permanent refusal whose cause a provider names in its reply.
fn refusal_hint(reply: &str) -> Option<&'static str> {
    // Exchange refuses a From the mailbox may not send as with 5.7.60 SendAsDenied.
    (reply.contains("5.7.60") || reply.contains("SendAsDenied")).then_some(
        "the account may not send as this From address: give the mailbox (or the app) Send As permission for it (Exchange: `Add-RecipientPermission -Identity <From address> -Trustee <mailbox or app> -AccessRights SendAs`), or send with the account's own address (`from` in the config, `send --from`)",
    )
}

/// Connects, secures the connection as configured, and runs one AUTH exchange.
async fn login(
    account: &Account,
    server: &crate::config::Server,
    token: &Secret,
) -> Result<Conn, LoginFailure> {
    let mut conn = Conn::open(server).await.map_err(LoginFailure::Other)?;
    tracing::debug!(account = %account.name, server = %conn.server(), tls = %server.tls, "connected");
    match authenticate(&mut conn, account, server, token).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.close();
            Err(e)
        }
    }
}

/// One AUTH exchange. The initial response goes on the AUTH line when that fits in 512 octets,
/// else after a bare `AUTH <MECH>` and the server's empty `334`.
async fn authenticate(
    conn: &mut Conn,
    account: &Account,
    server: &crate::config::Server,
    token: &Secret,
) -> Result<(), LoginFailure> {
    let mech = server.mechanism.sasl_name();
    let response = sasl::initial_response(
        server.mechanism,
        &account.email,
        (&server.host, server.port),
        token,
    );
    let inline_len = "AUTH ".len() + mech.len() + 1 + response.expose().len() + 2;
    let name = conn.server().to_string();
    tracing::trace!(server = %name, mechanism = %mech, inline = inline_len <= MAX_COMMAND_LINE, "AUTH {mech} [redacted]");
    let other = LoginFailure::Other;
    let mut reply = if inline_len <= MAX_COMMAND_LINE {
        let line = Secret::new(format!("AUTH {mech} {}\r\n", response.expose()));
        conn.command(line.expose(), "AUTH").await.map_err(other)?
    } else {
        conn.command(&format!("AUTH {mech}\r\n"), "AUTH")
            .await
            .map_err(other)?
    };
    if reply.code == 334 && inline_len > MAX_COMMAND_LINE {
        let line = Secret::new(format!("{}\r\n", response.expose()));
        reply = conn.command(line.expose(), "AUTH").await.map_err(other)?;
    }
    match reply.code {
        235 => return Ok(()),
        334 => {}
        _ => return Err(auth_refused(&name, &reply, None)),
    }
    // An error challenge: decode it, let the server finish the exchange, read its final reply.
    let challenge = reply.lines.first().and_then(|l| Rejection::decode(l));
    let cancel = format!("{}\r\n", sasl::cancel_reply(server.mechanism));
    let last = conn.command(&cancel, "AUTH").await.map_err(other)?;
    Err(auth_refused(&name, &last, challenge))
}

/// A refused AUTH: 4xx means the server could not check the token now (Dovecot's 454); 5xx is
/// a rejection (maybe with the challenge's reason); anything else is a protocol failure.
fn auth_refused(name: &str, reply: &Reply, challenge: Option<Rejection>) -> LoginFailure {
    if reply.is_transient() {
        LoginFailure::Other(ServerError::transient(
            name,
            format!("the server could not check the token now: {}", reply.text()),
        ))
    } else if reply.code >= 500 || challenge.is_some() {
        LoginFailure::Rejected {
            challenge,
            reply: reply.text(),
        }
    } else {
        LoginFailure::Other(ServerError::failed(
            name,
            format!("unexpected reply to AUTH: {}", reply.text()),
        ))
    }
}

/// Sends one message over a new session and returns the server's final reply.
///
/// # Errors
/// As [`Session::open`] and [`Session::send`].
pub async fn send_one<S: TokenStore>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    message: &lettre::Message,
) -> Result<Reply> {
    let mut session = Session::open(account, tokens).await?;
    let reply = session
        .send(message.envelope(), &message.formatted())
        .await?;
    session.quit().await;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exchange's send-as refusal names the permission to grant; other refusals have no hint.
    #[test]
    fn send_as_refusal_hint() {
        let reply = "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; 5.7.60";
        assert!(refusal_hint(reply).is_some_and(|h| h.contains("Send As")));
        assert_eq!(refusal_hint("550 5.1.1 no such user"), None);
    }
}

//! SMTP on lettre's connection API: connect (implicit TLS or STARTTLS, never AUTH in clear text off
//! loopback), authenticate with XOAUTH2 or OAUTHBEARER, send.
//!
//! lettre's own `Mechanism::Xoauth2` cannot answer a server's error challenge and has no
//! OAUTHBEARER, so the AUTH exchange is driven here with `command()`: the `334 <base64 JSON>`
//! challenge is decoded and answered, the final 535/454 read, and a rejected token triggers exactly
//! one forced refresh and one retry. Every network step has a timeout.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Result;
use lettre::address::Envelope;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use crate::config::{Account, Protocol, Server, Tls};
use crate::error::{clean, ServerError, SERVER_TEXT_MAX};
use crate::mail_auth::{self, Login, LoginFailure};
use crate::net::{self, COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::oauth::{TokenSource, TokenStore};
use crate::sasl::{self, Rejection};
use crate::secret::Secret;

/// The message body and the server's final reply (RFC 5321 §4.5.3.2.6: 10 minutes).
const DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. Longer AUTH lines
/// (Microsoft's 2.5 KB tokens) are sent as a bare `AUTH <mech>` and the response after `334`
/// (Dovecot submission rejects command lines over ~1 KB).
const MAX_COMMAND_LINE: usize = 512;

/// An authenticated SMTP connection.
pub struct Session {
    conn: AsyncSmtpConnection,
    server: String,
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
        Ok(Session {
            conn,
            server: name,
            renew_at,
        })
    }

    /// Sends one message. Returns the server's final reply.
    ///
    /// # Errors
    /// [`ServerError`]: 4xx and network failures are transient, 5xx permanent.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Response, ServerError> {
        let server = &self.server;
        timed(
            DATA_TIMEOUT,
            server,
            "sending the message",
            self.conn.send(envelope, message),
        )
        .await
    }

    /// Whether it is time to reconnect with a fresh token: a long batch never outlives its token.
    pub fn token_expiring(&self, now: u64) -> bool {
        now >= self.renew_at
    }

    /// `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Ends the session politely; errors are ignored (the message is already accepted).
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.conn.quit()).await;
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

/// Runs `fut` with a timeout, classifying its lettre error.
async fn timed<T>(
    limit: Duration,
    server: &str,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, ServerError> {
    net::timed(limit, server, what, fut, |e| classify(server, what, e)).await
}

/// 4xx and network trouble are transient; 5xx and TLS failures are not.
fn classify(server: &str, what: &str, e: lettre::transport::smtp::Error) -> ServerError {
    // lettre's text carries the server's reply: cleaned and cut before it reaches a message.
    let said = || clean(&e.to_string(), SERVER_TEXT_MAX);
    if e.is_permanent() {
        let text = said();
        let error = ServerError::failed(server, format!("{what} failed: {text}"));
        return match refusal_hint(&text) {
            Some(hint) => error.with_hint(hint),
            None => error,
        };
    }
    if e.is_transient() {
        return ServerError::transient(server, format!("{what} failed: {}", said()));
    }
    if let Some(tls) = tls_failure(&e) {
        return net::handshake_failed(server, what, &tls);
    }
    ServerError::transient(server, format!("{what} failed")).with_source(e)
}

/// The fix for a permanent refusal whose cause a provider names in its reply.
fn refusal_hint(reply: &str) -> Option<&'static str> {
    // Exchange refuses a From the mailbox may not send as with 5.7.60 SendAsDenied.
    (reply.contains("5.7.60") || reply.contains("SendAsDenied")).then_some(
        "the account may not send as this From address: give the mailbox (or the app) Send As permission for it (Exchange: `Add-RecipientPermission -Identity <From address> -Trustee <mailbox or app> -AccessRights SendAs`), or send with the account's own address (`from` in the config, `send --from`)",
    )
}

/// A TLS alert or certificate error, as its innermost text: rustls errors reach us as
/// `io::Error` of kind InvalidData (lettre's wrappers around it only repeat "Connection error").
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return Some(io.to_string());
            }
        }
        cause = c.source();
    }
    None
}

/// lettre's TLS settings for STARTTLS: the host name, and the `ca_file`'s certificates as
/// extra roots.
fn tls_parameters(server: &Server, name: &str) -> Result<TlsParameters, ServerError> {
    let failed = |reason: &str, e| ServerError::failed(name, reason.to_string()).with_source(e);
    let mut builder = TlsParameters::builder(server.host.clone());
    for cert in net::ca_certs(server)? {
        builder = builder.add_root_certificate(
            Certificate::from_der(cert.to_vec())
                .map_err(|e| failed("ca_file holds an unusable certificate", e))?,
        );
    }
    builder
        .build_rustls()
        .map_err(|e| failed("failed to set up TLS", e))
}

/// Connects, secures the connection as configured, and runs one AUTH exchange.
async fn login(
    account: &Account,
    server: &Server,
    token: &Secret,
) -> Result<AsyncSmtpConnection, LoginFailure> {
    let name = server.address();
    let other = LoginFailure::Other;
    let hello = ClientId::default();
    let tcp = net::connect(server).await.map_err(other)?;
    let stream = match server.tls {
        Tls::Implicit => net::tls(tcp, server, "connecting").await.map_err(other)?,
        Tls::Starttls | Tls::None => net::Stream::Plain(tcp),
    };
    let connect = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello);
    let mut conn = timed(CONNECT_TIMEOUT, &name, "connecting", connect)
        .await
        .map_err(other)?;
    if server.tls == Tls::Starttls {
        if !conn.can_starttls() {
            conn.abort().await;
            return Err(other(
                ServerError::failed(
                    name,
                    "the server does not offer STARTTLS; refusing to send a token in clear text",
                )
                .with_hint("use tls = \"implicit\" with the server's TLS port (465)"),
            ));
        }
        let params = tls_parameters(server, &name).map_err(other)?;
        timed(
            CONNECT_TIMEOUT,
            &name,
            "STARTTLS",
            conn.starttls(params, &hello),
        )
        .await
        .map_err(other)?;
    }
    tracing::debug!(account = %account.name, server = %name, tls = %server.tls, "connected");
    match authenticate(&mut conn, account, server, &name, token).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.abort().await;
            Err(e)
        }
    }
}

/// One AUTH exchange. The initial response goes on the AUTH line when that fits in 512 octets,
/// else after a bare `AUTH <MECH>` and the server's empty `334`.
async fn authenticate(
    conn: &mut AsyncSmtpConnection,
    account: &Account,
    server: &Server,
    name: &str,
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
    tracing::trace!(server = %name, mechanism = %mech, inline = inline_len <= MAX_COMMAND_LINE, "AUTH {mech} [redacted]");
    let first = if inline_len <= MAX_COMMAND_LINE {
        command(conn, name, format!("AUTH {mech} {}\r\n", response.expose())).await
    } else {
        match command(conn, name, format!("AUTH {mech}\r\n")).await {
            Ok(r) if r.has_code(334) => {
                command(conn, name, format!("{}\r\n", response.expose())).await
            }
            other => other,
        }
    };
    let reply = match first {
        Ok(r) if r.has_code(235) => return Ok(()),
        Ok(r) if r.has_code(334) => r,
        Ok(r) => {
            return Err(LoginFailure::Other(ServerError::failed(
                name,
                format!("unexpected reply to AUTH: {}", reply_text(&r)),
            )))
        }
        Err(AuthReply::Negative(e)) if e.is_transient() => return Err(cannot_check_now(name, &e)),
        Err(AuthReply::Negative(e)) => {
            return Err(LoginFailure::Rejected {
                challenge: None,
                reply: clean(&e.to_string(), SERVER_TEXT_MAX),
            })
        }
        Err(AuthReply::Failed(e)) => return Err(LoginFailure::Other(e)),
    };
    // An error challenge: decode it, let the server finish the exchange, read its final reply.
    let challenge = reply.first_line().and_then(Rejection::decode);
    let cancel = format!("{}\r\n", sasl::cancel_reply(server.mechanism));
    match command(conn, name, cancel).await {
        Err(AuthReply::Negative(e)) if e.is_transient() => Err(cannot_check_now(name, &e)),
        Err(AuthReply::Negative(e)) => Err(LoginFailure::Rejected {
            challenge,
            reply: clean(&e.to_string(), SERVER_TEXT_MAX),
        }),
        Err(AuthReply::Failed(e)) => Err(LoginFailure::Other(e)),
        Ok(r) => Err(LoginFailure::Rejected {
            challenge,
            reply: reply_text(&r),
        }),
    }
}

/// A 4xx reply to AUTH: the server's token validation is unavailable (Dovecot's 454).
fn cannot_check_now(name: &str, e: &lettre::transport::smtp::Error) -> LoginFailure {
    LoginFailure::Other(ServerError::transient(
        name,
        format!(
            "the server could not check the token now: {}",
            clean(&e.to_string(), SERVER_TEXT_MAX)
        ),
    ))
}

/// A command's outcome: lettre turns 4xx/5xx replies into errors; keep them apart from failures to
/// talk at all.
enum AuthReply {
    Negative(lettre::transport::smtp::Error),
    Failed(ServerError),
}

async fn command(
    conn: &mut AsyncSmtpConnection,
    name: &str,
    line: String,
) -> Result<Response, AuthReply> {
    let reply = async { Ok(conn.command(line).await) };
    match net::timed(
        COMMAND_TIMEOUT,
        name,
        "AUTH",
        reply,
        |never: Infallible| match never {},
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) if e.is_transient() || e.is_permanent() => Err(AuthReply::Negative(e)),
        Ok(Err(e)) => Err(AuthReply::Failed(classify(name, "AUTH", e))),
        Err(timeout) => Err(AuthReply::Failed(timeout)),
    }
}

/// A reply as one line of text: `250 2.0.0 Ok: queued as 4F1`.
pub fn reply_text(r: &Response) -> String {
    let text = format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" "));
    clean(&text, SERVER_TEXT_MAX)
}

/// Sends one message over a new session and returns the server's final reply.
///
/// # Errors
/// As [`Session::open`] and [`Session::send`].
pub async fn send_one<S: TokenStore>(
    account: &Account,
    tokens: &TokenSource<'_, S>,
    message: &lettre::Message,
) -> Result<Response> {
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

//! First authorization: the authorization code flow with PKCE (S256) through a loopback redirect
//! or a pasted redirect URL, and the device authorization grant (RFC 8628). Produces the tokens a
//! [`super::TokenSource`] then stores; never touches files itself.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, DeviceAuthorizationUrl, PkceCodeChallenge, RedirectUrl,
    RequestTokenError, Scope, StandardDeviceAuthorizationResponse, TokenUrl,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{AuthServer, Refreshed};
use crate::config::{Account, Provider};
use crate::error::UsageError;
use crate::error::{clean, AuthError, SERVER_TEXT_MAX};
use crate::secret::Secret;

/// The OpenID Connect scope that asks for a refresh token.
const OFFLINE_ACCESS: &str = "offline_access";

/// Why a login can end without a refresh token, and what to change, for `account`'s provider.
pub fn no_refresh_token_hint(account: &Account) -> String {
    match account.provider {
        Provider::Google => "Google issues one only with access_type=offline and prompt=consent, which mailpilot sends: check that the OAuth client is of type \"Desktop app\"".into(),
        Provider::Microsoft { .. } => format!("Microsoft issues one only for the offline_access scope: keep it in `scopes` of account \"{}\"", account.name),
        Provider::Custom if account.scopes.iter().any(|s| s == OFFLINE_ACCESS) => "the server ignored offline_access although mailpilot asked with prompt=consent: allow this client the refresh_token grant (offline access) in the server's client settings".into(),
        Provider::Custom => format!("add \"offline_access\" to `scopes` of account \"{}\" (OpenID Connect servers issue refresh tokens only for it; mailpilot then asks with prompt=consent), or allow this client the refresh_token grant in the server's client settings", account.name),
    }
}

/// How the user proves who they are.
#[derive(Debug, Clone)]
pub enum Flow {
    /// A browser redirected to a listener on 127.0.0.1.
    Loopback {
        /// Fixed port (for an `ssh -L` tunnel), else a random free one.
        port: Option<u16>,
        /// How long to wait for the browser.
        timeout: Duration,
    },
    /// The user opens the URL anywhere and pastes the final redirect URL (or the code) back.
    Paste {
        /// The port in the redirect URL (nothing listens; the browser shows an error page whose
        /// address holds the code); else `redirect_uri`'s, else [`DEFAULT_PASTE_PORT`].
        port: Option<u16>,
    },
    /// The device authorization grant: a code to enter on another device.
    Device {
        /// How long to keep polling.
        timeout: Duration,
    },
}

/// What the login tells the user, and how it reads a pasted answer: injected so the flows can
/// be driven by tests and by the CLI alike.
pub trait Prompt {
    /// Shows the authorization URL (and, for a fixed port, how to tunnel to it).
    fn open_url(&mut self, url: &str, tunnel_port: Option<u16>);
    /// Shows the device code and where to enter it.
    fn device_code(&mut self, verification_uri: &str, user_code: &str, complete_uri: Option<&str>);
    /// Reads the pasted redirect URL or code.
    ///
    /// # Errors
    /// Input is closed or unreadable.
    fn read_pasted(&mut self) -> Result<String>;
}

/// Runs `flow` for `account` and returns the tokens.
///
/// # Errors
/// A refused or failed authorization ([`AuthError::NeedsAuthorization`] with the provider's
/// reason), a state mismatch, a timeout, or network trouble.
pub async fn login(
    account: &Account,
    server: &AuthServer,
    secret: Option<&Secret>,
    flow: &Flow,
    prompt: &mut dyn Prompt,
) -> Result<Refreshed> {
    let login = Login {
        account,
        server,
        secret,
    };
    match flow {
        Flow::Device { timeout } => login.device(*timeout, prompt).await,
        Flow::Loopback { port, timeout } => {
            let port = login.port(*port)?;
            let (listeners, bound) = login.listen(port).await?;
            let (url, state, verifier, redirect) = login.authorize_url(bound)?;
            prompt.open_url(url.as_str(), port.map(|_| bound));
            let query = tokio::time::timeout(*timeout, wait_for_redirect(&listeners))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no answer from the browser within {}",
                        humantime::format_duration(*timeout)
                    )
                })??;
            let code = login.check_answer(&query, Some(&state))?;
            login.exchange(code, verifier, redirect).await
        }
        Flow::Paste { port } => {
            let port = login.port(*port)?.unwrap_or(DEFAULT_PASTE_PORT);
            let (url, state, verifier, redirect) = login.authorize_url(port)?;
            prompt.open_url(url.as_str(), None);
            let pasted = prompt.read_pasted()?;
            let pasted = pasted.trim();
            let (query, expected) = match pasted.split_once('?') {
                Some((_, q)) => (q.to_string(), Some(&state)),
                // Just the code: state cannot be checked, PKCE still binds the code to us.
                None if !pasted.is_empty() => (format!("code={}", urlencode(pasted)), None),
                None => return Err(UsageError("nothing was pasted".into()).into()),
            };
            let code = login.check_answer(&query, expected)?;
            login.exchange(code, verifier, redirect).await
        }
    }
}

/// The port `--paste` puts in the redirect when neither `--port` nor `redirect_uri` gives one.
pub const DEFAULT_PASTE_PORT: u16 = 8765;

/// One login's fixed parts.
struct Login<'a> {
    account: &'a Account,
    server: &'a AuthServer,
    secret: Option<&'a Secret>,
}

/// The parameters an authorization request carries besides the standard ones: the provider's
/// (Google's offline access, OpenID's consent for `offline_access`), the person who signs in,
/// then `auth_params`, which replace any of these by name.
fn authorization_params(account: &Account) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = Vec::new();
    match account.provider {
        // A refresh token only with offline access; consent again so Google issues a new one.
        Provider::Google => {
            params.push(("access_type".into(), "offline".into()));
            params.push(("prompt".into(), "consent".into()));
        }
        // OpenID Connect Core §11: `offline_access` is ignored unless the user is asked to
        // consent. (Entra issues refresh tokens for it without.)
        Provider::Custom if account.scopes.iter().any(|s| s == OFFLINE_ACCESS) => {
            params.push(("prompt".into(), "consent".into()));
        }
        Provider::Custom | Provider::Microsoft { .. } => {}
    }
    // The person who signs in: a delegate of a shared mailbox signs in as themselves.
    let hint = account.sign_in_as.as_deref().unwrap_or(&account.email);
    params.push(("login_hint".into(), hint.to_string()));
    for (name, value) in &account.auth_params {
        params.retain(|(n, _)| n != name);
        params.push((name.clone(), value.clone()));
    }
    params
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn bad_url(what: &str) -> impl Fn(url::ParseError) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("invalid {what}: {e}")
}

impl Login<'_> {
    /// The loopback port: `--port`, else `redirect_uri`'s; `None` for any free one.
    fn port(&self, flag: Option<u16>) -> Result<Option<u16>> {
        let configured = self.account.redirect_uri.as_ref().and_then(url::Url::port);
        match (flag, configured) {
            (Some(flag), Some(configured)) if flag != configured => Err(UsageError(format!(
                "--port {flag} differs from the port of redirect_uri ({configured}) of account \"{}\": the server accepts only the registered redirect",
                self.account.name
            ))
            .into()),
            (flag, configured) => Ok(flag.or(configured)),
        }
    }

    /// The loopback listeners for the redirect, on `port` (else a free one), and that port:
    /// 127.0.0.1, or [::1] for an IPv6 `redirect_uri`; for `localhost` both, on one port, since a
    /// browser may resolve it to either.
    async fn listen(&self, port: Option<u16>) -> Result<(Vec<TcpListener>, u16)> {
        let host = self.account.redirect_uri.as_ref().and_then(url::Url::host);
        let (first, both) = match host {
            Some(url::Host::Ipv6(_)) => ("::1", false),
            Some(url::Host::Domain(_)) => ("127.0.0.1", true),
            _ => ("127.0.0.1", false),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let v4 = TcpListener::bind((first, port.unwrap_or(0)))
                .await
                .with_context(|| format!("failed to listen on {first}:{}", port.unwrap_or(0)))?;
            let bound = v4
                .local_addr()
                .context("failed to read the listening port")?
                .port();
            if !both {
                return Ok((vec![v4], bound));
            }
            match TcpListener::bind(("::1", bound)).await {
                Ok(v6) => return Ok((vec![v4, v6], bound)),
                // The free IPv4 port is taken on IPv6: with a random port, take another.
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && port.is_none()
                        && attempts < 10 => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(
                        anyhow::Error::new(e).context(format!("failed to listen on [::1]:{bound}"))
                    )
                }
                // No IPv6 on this host: browsers then resolve localhost to 127.0.0.1.
                Err(_) => return Ok((vec![v4], bound)),
            }
        }
    }

    /// The redirect URI for `port`: `redirect_uri` with that port, else RFC 8252 §7.3's
    /// `http://127.0.0.1:PORT/`.
    fn redirect(&self, port: u16) -> Result<RedirectUrl> {
        let text = match &self.account.redirect_uri {
            Some(configured) => {
                let mut url = configured.clone();
                url.set_port(Some(port)).map_err(|()| {
                    anyhow::anyhow!("redirect_uri {configured} cannot take a port")
                })?;
                url.to_string()
            }
            None => format!("http://127.0.0.1:{port}/"),
        };
        RedirectUrl::new(text).map_err(bad_url("redirect URL"))
    }

    /// The authorization URL with PKCE and state, for a redirect to `port`.
    fn authorize_url(
        &self,
        port: u16,
    ) -> Result<(url::Url, CsrfToken, oauth2::PkceCodeVerifier, RedirectUrl)> {
        let account = self.account;
        let Some(auth_url) = &self.server.auth_url else {
            return Err(UsageError(format!(
                "account \"{}\" has no auth_url: set it, or `issuer` to discover it (provider = \"custom\"), or use --device",
                account.name
            ))
            .into());
        };
        let redirect = self.redirect(port)?;
        let client = super::client(account, self.secret)
            .set_auth_uri(AuthUrl::new(auth_url.clone()).map_err(bad_url("auth_url"))?)
            .set_redirect_uri(redirect.clone());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(account.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        for (name, value) in authorization_params(account) {
            request = request.add_extra_param(name, value);
        }
        let (url, state) = request.url();
        Ok((url, state, verifier, redirect))
    }

    /// The code from a redirect's query, after turning `error` into a message and checking
    /// `state` and the issuer (RFC 9207: an `iss` naming another server is a mix-up attack).
    fn check_answer(&self, query: &str, state: Option<&CsrfToken>) -> Result<AuthorizationCode> {
        let account = self.account;
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(expected) = state {
            if get("state").as_deref() != Some(expected.secret().as_str()) {
                bail!("the redirect's state does not match this login (a stale or forged redirect); nothing was stored — run `mailpilot auth login {}` again", account.name);
            }
            self.check_issuer(get("iss").as_deref())?;
        }
        if let Some(error) = get("error") {
            let error = clean(&error, SERVER_TEXT_MAX);
            let description = get("error_description").map_or(String::new(), |d| {
                format!(": {}", clean(&d, SERVER_TEXT_MAX))
            });
            return Err(AuthError::NeedsAuthorization {
                account: account.name.clone(),
                reason: format!("the authorization was refused ({error}{description})"),
                hint: format!(
                    "run `mailpilot auth login {}` again and allow access",
                    account.name
                ),
            }
            .into());
        }
        match get("code") {
            Some(code) if !code.is_empty() => Ok(AuthorizationCode::new(code)),
            _ => bail!("the redirect holds no authorization code"),
        }
    }

    /// RFC 9207 §2.4: an `iss` must be the issuer this login went to; a server that promised
    /// `iss` must send it.
    fn check_issuer(&self, iss: Option<&str>) -> Result<()> {
        let name = &self.account.name;
        match (iss, self.server.issuer.as_deref()) {
            (Some(iss), Some(issuer)) if iss != issuer => bail!(
                "the authorization response comes from issuer {} instead of {issuer} (a mix-up attack or a wrong `issuer`); nothing was stored — check `issuer` of account \"{name}\"",
                clean(iss, SERVER_TEXT_MAX)
            ),
            (None, Some(issuer)) if self.server.iss_required => bail!(
                "the authorization response has no `iss` although {issuer} promises one (RFC 9207); nothing was stored — check `issuer` of account \"{name}\""
            ),
            _ => Ok(()),
        }
    }

    async fn exchange(
        &self,
        code: AuthorizationCode,
        verifier: oauth2::PkceCodeVerifier,
        redirect: RedirectUrl,
    ) -> Result<Refreshed> {
        let account = self.account;
        let client = super::client(account, self.secret)
            .set_token_uri(self.token_url()?)
            .set_redirect_uri(redirect);
        let endpoint = super::http::Endpoint::new(account)?;
        let http = |req| endpoint.call(req);
        let token = client
            .exchange_code(code)
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
            .map_err(|e| self.error("the token endpoint refused the authorization code", e))?;
        Ok(Refreshed::from_response(&token))
    }

    fn token_url(&self) -> Result<TokenUrl> {
        TokenUrl::new(self.server.token_url.clone()).map_err(bad_url("token_url"))
    }

    fn error<RE, TE>(&self, what: &str, e: RequestTokenError<RE, TE>) -> anyhow::Error
    where
        RE: std::error::Error + Send + Sync + 'static,
        TE: oauth2::ErrorResponse + Send + Sync + 'static,
    {
        let account = &self.account.name;
        match e {
            RequestTokenError::ServerResponse(resp) => AuthError::NeedsAuthorization {
                account: account.clone(),
                reason: format!("{what} ({})", clean(&resp.to_string(), SERVER_TEXT_MAX)),
                hint: format!("run `mailpilot auth login {account}` again"),
            }
            .into(),
            RequestTokenError::Request(e) => {
                let url = &self.server.token_url;
                let reason = format!("the request to {url} failed");
                super::http::unanswered(self.account, url, reason, Box::new(e)).into()
            }
            other => anyhow::anyhow!("{what}: {other}"),
        }
    }

    async fn device(&self, timeout: Duration, prompt: &mut dyn Prompt) -> Result<Refreshed> {
        let account = self.account;
        if account.provider == Provider::Google {
            return Err(UsageError(
                "Google does not allow Gmail scopes (https://mail.google.com/) in the device flow: use `mailpilot auth login ACCOUNT` (browser) or `--paste` on a headless host".into(),
            )
            .into());
        }
        let Some(device_url) = &self.server.device_url else {
            return Err(UsageError(format!(
                "account \"{}\" has no device_url (the device *authorization* endpoint, RFC 8628); set it or use the browser login",
                account.name
            ))
            .into());
        };
        let client = super::client(account, self.secret)
            .set_device_authorization_url(
                DeviceAuthorizationUrl::new(device_url.clone()).map_err(bad_url("device_url"))?,
            )
            .set_token_uri(self.token_url()?);
        let endpoint = super::http::Endpoint::new(account)?;
        let http = |req| endpoint.call(req);
        let details: StandardDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(account.scopes.iter().cloned().map(Scope::new))
            .request_async(&http)
            .await
            .map_err(|e| self.error("the device authorization endpoint refused", e))?;
        prompt.device_code(
            details.verification_uri().as_str(),
            details.user_code().secret(),
            details
                .verification_uri_complete()
                .map(|u| u.secret().as_str()),
        );
        let token = client
            .exchange_device_access_token(&details)
            .request_async(&http, tokio::time::sleep, Some(timeout))
            .await
            .map_err(|e| self.error("the device login did not complete", e))?;
        Ok(Refreshed::from_response(&token))
    }
}

/// Accepts browser requests on the loopback listener until one carries `code` or `error`;
/// answers it with a small page. Returns its query string.
async fn wait_for_redirect(listeners: &[TcpListener]) -> Result<String> {
    loop {
        let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
        let (accepted, _, _) = futures_util::future::select_all(accepts).await;
        let (mut conn, _) = accepted.context("failed to accept the browser's connection")?;
        let mut buf = vec![0u8; 16 * 1024];
        let n = match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => continue,
        };
        let request = String::from_utf8_lossy(&buf[..n]);
        let target = request.split_whitespace().nth(1).unwrap_or("/");
        let query = target
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let has = |k: &str| pairs.iter().any(|(key, _)| key == k);
        if !has("code") && !has("error") {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let (title, text) = if has("code") {
            (
                "Signed in",
                "mailpilot has received the authorization. You can close this tab.",
            )
        } else {
            (
                "Not signed in",
                "The authorization was refused. mailpilot shows the reason in the terminal.",
            )
        };
        let page = format!("<!DOCTYPE html><html><head><title>mailpilot: {title}</title></head><body style=\"font-family:sans-serif\"><h2>{title}</h2><p>{text}</p></body></html>");
        let _ = conn
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len()).as_bytes())
            .await;
        let _ = conn.shutdown().await;
        // A graceful close: whatever the browser still sends is read (briefly) before the socket
        // is dropped, so it sees the page and an end, not a reset.
        let drain = async {
            let mut rest = [0u8; 1024];
            while matches!(conn.read(&mut rest).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        return Ok(query);
    }
}

//! One `refresh_token` grant request with the `oauth2` crate, and the classification of its failure
//! into needs-authorization, transient and failed. Never touches files.

use std::time::Duration;

use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl};

use super::http::Endpoint;
use super::login_command;
use crate::config::{Account, Provider};
use crate::error::{clean, AuthError, BoxError, SERVER_TEXT_MAX};
use crate::secret::Secret;

/// What a successful refresh returned.
#[derive(Debug)]
pub struct Refreshed {
    /// The new access token.
    pub access_token: Secret,
    /// Its lifetime as the server stated it.
    pub expires_in: Option<Duration>,
    /// A rotated refresh token, when the server sent one.
    pub refresh_token: Option<Secret>,
    /// Granted scopes, when the server said.
    pub scope: Option<String>,
}

impl Refreshed {
    /// The parts of a token endpoint's answer that mailpilot keeps.
    pub fn from_response(token: &BasicTokenResponse) -> Self {
        Refreshed {
            access_token: Secret::new(token.access_token().secret().clone()),
            expires_in: token.expires_in(),
            refresh_token: token
                .refresh_token()
                .map(|t| Secret::new(t.secret().clone())),
            scope: token
                .scopes()
                .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" ")),
        }
    }
}

/// Makes refresh requests for one account.
pub struct Refresher<'a> {
    account: &'a Account,
    server: super::AuthServer,
    endpoint: Endpoint,
}

/// RFC 7523 §2.1: the grant is a JWT (a service account acting for a user).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// RFC 7523 §2.2: the client authenticates with a JWT.
const JWT_BEARER_CLIENT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest OAuth error code kept (the standard ones are under 30 characters).
const ERROR_CODE_MAX: usize = 100;

/// Google's "Testing" publishing status expires refresh tokens after 7 days; a refusal of a token
/// about this old is explained as that.
const GOOGLE_TESTING_LIFETIME: std::ops::RangeInclusive<u64> = (6 * 86_400)..=(8 * 86_400);

impl<'a> Refresher<'a> {
    /// A refresher for `account` at `server` (see [`super::discovery::resolve`]), with its own
    /// [`Endpoint`] client.
    ///
    /// # Errors
    /// The TLS stack cannot be initialised.
    pub fn new(account: &'a Account, server: super::AuthServer) -> Result<Self, AuthError> {
        Ok(Self {
            account,
            server,
            endpoint: Endpoint::new(account)?,
        })
    }

    /// Exchanges `refresh_token` for a new access token. `client_secret` is the resolved secret
    /// (`None` for public clients); `granted` the scopes the grant holds, when known (see
    /// [`super::scope::on_refresh`]); `token_age` is how long ago the refresh token was obtained,
    /// used only to explain a refusal.
    ///
    /// # Errors
    /// An [`AuthError`] whose variant says whether a person must log in again or a retry may work.
    pub async fn refresh(
        &self,
        refresh_token: &Secret,
        client_secret: Option<&Secret>,
        granted: Option<&str>,
        token_age: Option<u64>,
    ) -> Result<Refreshed, AuthError> {
        let account = self.account;
        let url = &self.server.token_url;
        let token_url =
            TokenUrl::new(url.clone()).map_err(|e| self.failed("invalid token_url", e))?;
        let client = super::client(account, client_secret).set_token_uri(token_url);
        let rt = RefreshToken::new(refresh_token.expose().to_string());
        let mut request = client.exchange_refresh_token(&rt);
        let scopes = super::scope::on_refresh(account, granted);
        if !scopes.is_empty() {
            request = request.add_scopes(scopes.into_iter().map(Scope::new));
        }
        tracing::debug!(account = %account.name, url = %url, "requesting a token refresh");
        let http = |req| self.endpoint.call(req);
        let result = request.request_async(&http).await;
        self.finish(result, token_age)
    }

    /// Revokes the grant at `url` (RFC 7009 §2.1): the refresh token with
    /// `token_type_hint=refresh_token`, the client authenticated as at the token endpoint (Basic
    /// or in the body per `client_auth`; its id alone for a public client).
    ///
    /// # Errors
    /// [`AuthError::Transient`] when the endpoint cannot be reached; a refusal (with its OAuth
    /// error, if it sent one).
    pub async fn revoke(
        &self,
        url: &str,
        refresh_token: &Secret,
        client_secret: Option<&Secret>,
    ) -> anyhow::Result<()> {
        let account = self.account;
        let mut form = vec![
            ("token", refresh_token.expose()),
            ("token_type_hint", "refresh_token"),
        ];
        let basic = match (account.client_auth, client_secret) {
            (crate::config::ClientAuth::Basic, Some(secret)) => {
                Some(basic_credentials(&account.client_id, secret))
            }
            (_, Some(secret)) => {
                form.push(("client_id", &account.client_id));
                form.push(("client_secret", secret.expose()));
                None
            }
            (_, None) => {
                form.push(("client_id", &account.client_id));
                None
            }
        };
        let (status, body) = self
            .endpoint
            .post_form(url, &form, basic.as_ref())
            .await
            .map_err(|e| AuthError::Transient {
                account: account.name.clone(),
                reason: format!("the revocation request to {url} failed"),
                source: Some(super::http::cause(e)),
            })?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let reason = match serde_json::from_str::<BasicErrorResponse>(&body) {
            Ok(e) => format!(
                "{}{}",
                clean(e.error().as_ref(), ERROR_CODE_MAX),
                e.error_description()
                    .map(|d| format!(": {}", clean(d, SERVER_TEXT_MAX)))
                    .unwrap_or_default()
            ),
            Err(_) => format!(
                "HTTP {status}: {}",
                clean(body.lines().next().unwrap_or_default(), SERVER_TEXT_MAX)
            ),
        };
        anyhow::bail!(
            "{url} refused to revoke the grant ({reason}); the grant is still stored (check client_id, the client secret and client_auth with `mailpilot config check`)"
        )
    }

    /// Asks for an access token with the app's own credentials (OAuth2 client credentials, RFC
    /// 6749 §4.4): the account's scopes, no refresh token.
    ///
    /// # Errors
    /// An [`AuthError`] whose variant says whether a person must fix the app's credentials or
    /// a retry may work.
    pub async fn client_credentials(
        &self,
        client_secret: Option<&Secret>,
        now: u64,
    ) -> Result<Refreshed, AuthError> {
        let account = self.account;
        let url = &self.server.token_url;
        let token_url =
            TokenUrl::new(url.clone()).map_err(|e| self.failed("invalid token_url", e))?;
        let client = super::client(account, client_secret).set_token_uri(token_url);
        let mut request = client
            .exchange_client_credentials()
            .add_scopes(account.scopes.iter().cloned().map(Scope::new));
        // With a certificate the app proves itself with a signed assertion (RFC 7523 §2.2)
        // instead of a secret; the assertion is made fresh for this request.
        let assertion = match &account.client_certificate {
            Some(c) => Some(
                super::assertion::AppKey::load(&c.certificate, &c.key)
                    .and_then(|key| key.client_assertion(&account.client_id, url, now))
                    .map_err(|e| AuthError::Failed {
                        account: account.name.clone(),
                        reason: "the app's certificate or key cannot be used".into(),
                        hint: Some("check client_certificate_file and client_key_file (`mailpilot config check`)".into()),
                        source: Some(e.into()),
                    })?,
            ),
            None => None,
        };
        if let Some(assertion) = &assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER_CLIENT)
                .add_extra_param("client_assertion", assertion.expose().to_string());
        }
        tracing::debug!(account = %account.name, url = %url, "requesting an app token");
        let http = |req| self.endpoint.call(req);
        let result = request.request_async(&http).await;
        self.finish(result, None)
    }

    /// Asks for an access token for the account's user as its Google service account (JWT bearer
    /// grant, RFC 7523 §2.1; domain-wide delegation): a fresh signed assertion, no client secret,
    /// no refresh token.
    ///
    /// # Errors
    /// An [`AuthError`]: the key cannot be used, the provider refuses (a person must fix the
    /// delegation or the key), or a retry may work.
    pub async fn jwt_bearer(&self, now: u64) -> Result<Refreshed, AuthError> {
        let account = self.account;
        let url = &self.server.token_url;
        let unusable = |e: anyhow::Error| {
            AuthError::Failed {
            account: account.name.clone(),
            reason: "the service account key cannot be used".into(),
            hint: Some("check service_account_file (`mailpilot config check`): the JSON key Google issued, `chmod 600`".into()),
            source: Some(e.into()),
        }
        };
        let path = account
            .service_account
            .as_deref()
            .ok_or_else(|| unusable(anyhow::anyhow!("no service_account_file is set")))?;
        let key = super::assertion::ServiceAccountKey::load(path).map_err(unusable)?;
        let assertion = key
            .grant_assertion(&account.email, &account.scopes, url, now)
            .map_err(unusable)?;
        tracing::debug!(account = %account.name, url = %url, service_account = %key.client_email, "requesting a token for a delegated user");
        let form = [
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.expose()),
        ];
        let (status, body) = self
            .endpoint
            .post_form(url, &form, None)
            .await
            .map_err(|e| self.classify(RequestTokenError::Request(e), None, None))?;
        if (200..300).contains(&status) {
            let body = super::http::normalize(body.into_bytes());
            return match serde_json::from_slice::<BasicTokenResponse>(&body) {
                Ok(tok) => Ok(Refreshed::from_response(&tok)),
                Err(_) => Err(self.unexpected(
                    format!(
                        "{url} answered HTTP {status} with a body that is not a token response"
                    ),
                    Some(status),
                    None,
                )),
            };
        }
        match serde_json::from_str::<BasicErrorResponse>(&body) {
            Ok(error) => {
                Err(self.classify(RequestTokenError::ServerResponse(error), Some(status), None))
            }
            Err(_) => Err(self.unexpected(
                format!("{url} answered HTTP {status} with a body that is not an OAuth error"),
                Some(status),
                None,
            )),
        }
    }

    /// The outcome of a token request; the oauth2 crate drops the HTTP status of error
    /// responses, so the endpoint kept it, to tell a 503 from a 400.
    fn finish(
        &self,
        result: Result<
            BasicTokenResponse,
            RequestTokenError<oauth2::HttpClientError<reqwest::Error>, BasicErrorResponse>,
        >,
        token_age: Option<u64>,
    ) -> Result<Refreshed, AuthError> {
        let status = self.endpoint.last_status();
        match result {
            Ok(tok) => {
                tracing::debug!(account = %self.account.name, rotated = tok.refresh_token().is_some(), "token request succeeded");
                Ok(Refreshed::from_response(&tok))
            }
            Err(e) => Err(self.classify(e, status, token_age)),
        }
    }

    fn failed(&self, reason: &str, source: impl Into<BoxError>) -> AuthError {
        AuthError::Failed {
            account: self.account.name.clone(),
            reason: reason.into(),
            hint: None,
            source: Some(source.into()),
        }
    }

    fn transient(&self, reason: String, source: Option<BoxError>) -> AuthError {
        AuthError::Transient {
            account: self.account.name.clone(),
            reason,
            source,
        }
    }

    fn classify(
        &self,
        error: RequestTokenError<oauth2::HttpClientError<reqwest::Error>, BasicErrorResponse>,
        status: Option<u16>,
        token_age: Option<u64>,
    ) -> AuthError {
        let url = &self.server.token_url;
        let http = status.map_or(String::new(), |s| format!("HTTP {s}"));
        let server_side = status.is_some_and(|s| s == 408 || s == 429 || s >= 500);
        match error {
            RequestTokenError::ServerResponse(resp) => {
                // The server's words are printed, stored and passed to hooks: bounded and clean.
                let code = clean(resp.error().as_ref(), ERROR_CODE_MAX);
                let description = resp
                    .error_description()
                    .map(|d| clean(d.lines().next().unwrap_or_default().trim(), SERVER_TEXT_MAX));
                let said = match &description {
                    Some(d) => format!("{code}: {d}"),
                    None => code.clone(),
                };
                let temporary = matches!(resp.error(), BasicErrorResponseType::Extension(c) if c == "temporarily_unavailable" || c == "server_error");
                if server_side || temporary {
                    self.transient(format!("{url} answered {http} ({said})"), None)
                } else {
                    let (reason, hint) = if self.account.grant.needs_person() {
                        (
                            format!("the token endpoint refused the refresh ({said})"),
                            reauth_hint(self.account, &code, description.as_deref(), token_age),
                        )
                    } else {
                        (
                            format!("the token endpoint refused the app's credentials ({said})"),
                            app_hint(self.account, &code, description.as_deref()),
                        )
                    };
                    AuthError::NeedsAuthorization {
                        account: self.account.name.clone(),
                        reason,
                        hint,
                    }
                }
            }
            RequestTokenError::Request(e) => {
                let reason = if is_timeout(&e) {
                    format!(
                        "the request to {url} timed out after {}",
                        humantime::format_duration(self.account.token_timeout)
                    )
                } else {
                    format!("the request to {url} failed")
                };
                super::http::unanswered(self.account, url, reason, super::http::cause(e))
            }
            RequestTokenError::Parse(e, _body) => {
                let reason =
                    format!("{url} answered {http} with a body that is not a token response");
                self.unexpected(reason, status, Some(Box::new(e)))
            }
            RequestTokenError::Other(message) => {
                let reason = format!("{url} answered {http} unexpectedly ({message})");
                self.unexpected(reason, status, None)
            }
        }
    }

    /// An answer that is not OAuth: a client error status (404, 405...) means a wrong `token_url`
    /// that no retry fixes; anything else (2xx, 5xx, no status) may be a proxy or outage.
    fn unexpected(
        &self,
        reason: String,
        status: Option<u16>,
        source: Option<BoxError>,
    ) -> AuthError {
        let client_error = status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
        let server_side = status.is_some_and(|s| s == 408 || s == 429 || s >= 500);
        if server_side || status.is_none() {
            return self.transient(reason, source);
        }
        if !client_error {
            // A 2xx/3xx that is not OAuth (a proxy's or captive portal's page): retried, but
            // marked so that a streak of them ends up in front of a person.
            let marker = UnexpectedAnswer(source.unwrap_or_else(|| reason.clone().into()));
            return self.transient(reason, Some(Box::new(marker)));
        }
        AuthError::Failed {
            account: self.account.name.clone(),
            reason,
            hint: Some(format!(
                "check token_url of account \"{}\" (`mailpilot config check`)",
                self.account.name
            )),
            source,
        }
    }
}

/// The token endpoint answered with a success status but not with a token response. Transient at
/// first (a proxy hiccup), it becomes a failure a person must look at when it lasts (see
/// [`super::source`]). Shows as its cause.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UnexpectedAnswer(pub BoxError);

fn is_timeout(e: &oauth2::HttpClientError<reqwest::Error>) -> bool {
    matches!(e, oauth2::HttpClientError::Reqwest(r) if r.is_timeout())
}

/// The Entra error number in a description (`AADSTS7000215: …` → `7000215`), if any.
fn aadsts(description: Option<&str>) -> &str {
    description
        .and_then(|d| d.strip_prefix("AADSTS"))
        .map(|d| {
            d.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// What to do about refused app credentials (client credentials): no sign-in helps, the app's
/// registration or secret must be fixed.
fn app_hint(account: &Account, code: &str, description: Option<&str>) -> String {
    let name = &account.name;
    if account.grant == crate::config::Grant::ServiceAccount {
        return service_account_hint(account, code, description);
    }
    match (code, aadsts(description)) {
        (_, "7000215" | "7000222") | ("invalid_client", "") => format!(
            "the app's client secret was rejected or has expired: create a new one (Entra admin center → App registrations → the app → Certificates & secrets) and point client_secret_env / _file / _cmd of account \"{name}\" at it"
        ),
        (_, "700027") => format!(
            "the provider cannot verify the app's signed assertion: upload client_certificate_file of account \"{name}\" to the app (App registrations → the app → Certificates & secrets → Certificates), and check that client_key_file is its key"
        ),
        (_, "700016") => format!(
            "the app (client_id of account \"{name}\") is not registered in this tenant: check client_id and tenant"
        ),
        (_, "65001") | ("unauthorized_client", _) => "an administrator must grant admin consent for the app's application permissions (IMAP.AccessAsApp, SMTP.SendAsApp) in the Entra admin center (App registrations → the app → API permissions)".to_string(),
        _ => format!(
            "check client_id, the client secret and tenant of account \"{name}\" (`mailpilot config check`)"
        ),
    }
}

/// What to do about a refused service-account grant (Google domain-wide delegation).
fn service_account_hint(account: &Account, code: &str, description: Option<&str>) -> String {
    let description = description.unwrap_or_default();
    if code == "unauthorized_client" {
        return format!(
            "the service account's client ID is not authorised for {} in the Google Admin console (Security → Access and data control → API controls → Domain-wide delegation: add the client ID with that scope)",
            account.scopes.join(" ")
        );
    }
    if description.contains("Invalid email or User ID") {
        return format!(
            "{} is not a user of the Workspace domain: set email to an existing user's address",
            account.email
        );
    }
    if description.contains("Invalid JWT Signature") || code == "invalid_client" {
        return "the service account key was deleted or rotated: create a new key (Google Cloud console → IAM → Service accounts → Keys) and point service_account_file at it".into();
    }
    format!(
        "check service_account_file, email and the domain-wide delegation of account \"{}\" (`mailpilot config check`)",
        account.name
    )
}

/// What to do about a refused refresh, specific where the provider's error code says why.
fn reauth_hint(
    account: &Account,
    code: &str,
    description: Option<&str>,
    token_age: Option<u64>,
) -> String {
    let name = &account.name;
    let login = login_command(name);
    match (&account.provider, code, aadsts(description)) {
        (Provider::Google, "invalid_grant", _)
            if token_age.is_some_and(|age| GOOGLE_TESTING_LIFETIME.contains(&age)) =>
        {
            format!("this refresh token is about 7 days old: Google expires refresh tokens after 7 days while the app's OAuth consent screen is in \"Testing\"; set its publishing status to \"In production\", then run `{login}`")
        }
        (_, _, "700082") => format!(
            "the refresh token expired after 90 days without use; run `{login}`, then keep it alive with `mailpilot auth refresh {name} --if-older-than 7d` from a weekly timer"
        ),
        (_, _, "50076" | "50079" | "50078" | "70043" | "70044") => format!(
            "your tenant's Conditional Access / sign-in frequency policy requires a new sign-in (tenant policy, not a mailpilot fault); run `{login}`"
        ),
        (_, _, "65001") => format!(
            "the app lacks consent for these scopes: an administrator must grant consent in the Entra admin center (Enterprise applications → the app → Permissions), then run `{login}`"
        ),
        (_, "invalid_client" | "unauthorized_client", _) | (_, _, "7000215" | "700016" | "7000222") => format!(
            "check client_id and the client secret of account \"{name}\" (`mailpilot config check`); the provider does not accept them"
        ),
        (_, "invalid_scope", _) | (_, _, "900144" | "70011") => format!(
            "check scopes of account \"{name}\" (`mailpilot config check`), then run `{login}`"
        ),
        _ => format!("the grant was revoked or has expired; sign in again with `{login}`"),
    }
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn basic_credentials(client_id: &str, secret: &Secret) -> Secret {
    use base64::Engine;
    let encode = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose()));
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Basic client credentials are form-encoded before base64 (RFC 6749 §2.3.1), so ids and
    /// secrets with `:` or spaces survive.
    #[test]
    fn basic_credentials_encoding() {
        use base64::Engine;
        let value = basic_credentials("app:1", &Secret::new("s p&x"));
        let b64 = value.expose().strip_prefix("Basic ").expect("Basic");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(raw, b"app%3A1:s+p%26x");
        assert_eq!(format!("{value:?}"), "[redacted]");
    }
    use crate::config::{ClientAuth, Endpoints};

    fn account(provider: Provider) -> Account {
        Account {
            name: "work".into(),
            provider,
            grant: crate::config::Grant::AuthorizationCode,
            email: "a@example.com".into(),
            sign_in_as: None,
            from: None,
            client_id: "id".into(),
            client_secret: None,
            client_auth: ClientAuth::Body,
            client_certificate: None,
            service_account: None,
            scopes: vec![],
            endpoints: Endpoints {
                issuer: None,
                auth_url: None,
                token_url: Some("http://127.0.0.1:9/token".into()),
                device_url: None,
                revoke_url: None,
            },
            auth_params: Vec::new(),
            redirect_uri: None,
            proxy: None,
            ca_file: None,
            refresh_margin: Duration::from_secs(300),
            token_timeout: Duration::from_secs(30),
            max_message_size: 50_000_000,
            smtp: None,
            imap: None,
        }
    }

    /// Google's 7-day Testing expiry is recognised by the token's age.
    #[test]
    fn google_testing_hint() {
        let a = account(Provider::Google);
        let hint = reauth_hint(
            &a,
            "invalid_grant",
            Some("Token has been expired or revoked."),
            Some(7 * 86_400 + 5),
        );
        assert!(hint.contains("\"Testing\""), "{hint}");
        let hint = reauth_hint(&a, "invalid_grant", None, Some(30 * 86_400));
        assert!(
            hint.starts_with("the grant was revoked or has expired"),
            "{hint}"
        );
    }

    /// Microsoft AADSTS codes map to their causes.
    #[test]
    fn microsoft_hints() {
        let a = account(Provider::Microsoft {
            tenant: "common".into(),
            cloud: crate::config::Cloud::Global,
        });
        let h = |d: &str| reauth_hint(&a, "invalid_grant", Some(d), None);
        assert!(
            h("AADSTS700082: The refresh token has expired due to inactivity.").contains("90 days")
        );
        assert!(h("AADSTS50076: Due to a configuration change").contains("Conditional Access"));
        assert!(h("AADSTS65001: The user or administrator has not consented").contains("consent"));
        assert!(reauth_hint(&a, "invalid_client", None, None).contains("client secret"));
    }
}

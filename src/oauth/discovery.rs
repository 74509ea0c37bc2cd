//! The authorization server an account talks to, resolved: the endpoints its configuration names
//! (or its provider's preset), and for an account with an `issuer` the rest from the server's
//! metadata (OpenID Connect Discovery 1.0 at `{issuer}/.well-known/openid-configuration`, else
//! RFC 8414 at `/.well-known/oauth-authorization-server{path}`). Metadata is cached in the token
//! store for [`MAX_AGE`]; while the server cannot be reached a stale copy is used.

use serde::{Deserialize, Serialize};

use super::http::Endpoint;
use super::TokenStore;
use crate::config::{Account, Endpoints};
use crate::error::{clean, AuthError, SERVER_TEXT_MAX};

/// How long fetched metadata is used before it is fetched again.
pub const MAX_AGE: u64 = 86_400;

/// The fields of a metadata document mailpilot uses, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The issuer the document states (equal to the configured one).
    pub issuer: String,
    /// Authorization endpoint.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Token endpoint.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Device authorization endpoint (RFC 8628).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// Revocation endpoint (RFC 7009).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RFC 9207: authorization responses carry `iss`.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// When mailpilot fetched it (Unix seconds; not part of the server's document).
    #[serde(default)]
    pub fetched_at: u64,
}

/// The authorization server as used for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthServer {
    /// The issuer identifier, when known (an `iss` in an authorization response must equal it).
    pub issuer: Option<String>,
    /// Authorization endpoint.
    pub auth_url: Option<String>,
    /// Token endpoint.
    pub token_url: String,
    /// Device authorization endpoint.
    pub device_url: Option<String>,
    /// Revocation endpoint.
    pub revoke_url: Option<String>,
    /// The server promised `iss` in authorization responses (RFC 9207 §3): one without is refused.
    pub iss_required: bool,
}

impl AuthServer {
    /// The configured endpoints, each missing one filled from `metadata`; `None` without a token
    /// endpoint.
    fn from(endpoints: &Endpoints, metadata: Option<&Metadata>) -> Option<Self> {
        let pick = |own: &Option<String>, found: Option<&Option<String>>| {
            own.clone().or_else(|| found.cloned().flatten())
        };
        Some(Self {
            issuer: metadata
                .map(|m| m.issuer.clone())
                .or_else(|| endpoints.issuer.clone()),
            auth_url: pick(
                &endpoints.auth_url,
                metadata.map(|m| &m.authorization_endpoint),
            ),
            token_url: pick(&endpoints.token_url, metadata.map(|m| &m.token_endpoint))?,
            device_url: pick(
                &endpoints.device_url,
                metadata.map(|m| &m.device_authorization_endpoint),
            ),
            revoke_url: pick(
                &endpoints.revoke_url,
                metadata.map(|m| &m.revocation_endpoint),
            ),
            iss_required: metadata
                .is_some_and(|m| m.authorization_response_iss_parameter_supported),
        })
    }
}

/// Whether `endpoints` leave something to discover.
fn needs_discovery(endpoints: &Endpoints) -> bool {
    endpoints.issuer.is_some()
        && [
            &endpoints.auth_url,
            &endpoints.token_url,
            &endpoints.device_url,
            &endpoints.revoke_url,
        ]
        .iter()
        .any(|u| u.is_none())
}

/// `account`'s authorization server: from its configuration alone when that names everything,
/// else with metadata from `store`'s cache (younger than [`MAX_AGE`]) or fetched now.
///
/// # Errors
/// [`AuthError::Transient`] when the metadata cannot be fetched and none is cached;
/// [`AuthError::Failed`] when the server's answer is not usable metadata for this issuer.
pub async fn resolve<S: TokenStore>(
    account: &Account,
    store: &S,
    now: u64,
) -> Result<AuthServer, AuthError> {
    let endpoints = &account.endpoints;
    let Some(issuer) = endpoints
        .issuer
        .as_deref()
        .filter(|_| needs_discovery(endpoints))
    else {
        return AuthServer::from(endpoints, None)
            .ok_or_else(|| failed(account, "no token_url is configured".into()));
    };
    let cached = store.load_metadata(issuer).await.unwrap_or_else(|e| {
        tracing::warn!(account = %account.name, "ignoring the cached metadata of {issuer}: {e:#}");
        None
    });
    let metadata = match cached {
        Some(m) if now.saturating_sub(m.fetched_at) < MAX_AGE => m,
        stale => match fetch(account, issuer, now).await {
            Ok(m) => {
                if let Err(e) = store.save_metadata(issuer, &m).await {
                    tracing::warn!(account = %account.name, "failed to cache the metadata of {issuer}: {e:#}");
                }
                m
            }
            Err(e @ AuthError::Transient { .. }) => match stale {
                Some(m) => {
                    tracing::warn!(account = %account.name, "using cached metadata of {issuer}: {e}");
                    m
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        },
    };
    AuthServer::from(endpoints, Some(&metadata)).ok_or_else(|| {
        failed(
            account,
            format!("the metadata of {issuer} names no token_endpoint"),
        )
    })
}

fn failed(account: &Account, reason: String) -> AuthError {
    AuthError::Failed {
        account: account.name.clone(),
        reason,
        hint: Some(format!(
            "check `issuer` of account \"{}\" (the URL the server states as its issuer), or set token_url and auth_url instead",
            account.name
        )),
        source: None,
    }
}

/// The two places metadata may be published for `issuer`: OpenID Connect's (appended to the
/// issuer) and RFC 8414's (inserted before the issuer's path).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut urls = vec![format!("{trimmed}/.well-known/openid-configuration")];
    if let Ok(url) = url::Url::parse(trimmed) {
        let path = url.path().trim_end_matches('/');
        let mut at = url.clone();
        at.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
        urls.push(at.to_string());
    }
    urls
}

/// Fetches and checks the metadata of `issuer`.
async fn fetch(account: &Account, issuer: &str, now: u64) -> Result<Metadata, AuthError> {
    let endpoint = Endpoint::new(account)?;
    let mut refused = Vec::new();
    for url in metadata_urls(issuer) {
        tracing::debug!(account = %account.name, url = %url, "fetching authorization server metadata");
        let (status, body) = endpoint.get(&url).await.map_err(|e| {
            let reason = format!("the metadata of {issuer} could not be fetched from {url}");
            super::http::unanswered(account, &url, reason, super::http::cause(e))
        })?;
        match status {
            200 => return parse(account, issuer, &body, now),
            500..=599 => {
                return Err(AuthError::Transient {
                    account: account.name.clone(),
                    reason: format!("{url} answered HTTP {status}"),
                    source: None,
                })
            }
            _ => refused.push(format!("{url}: HTTP {status}")),
        }
    }
    Err(failed(
        account,
        format!(
            "{issuer} publishes no authorization server metadata ({})",
            refused.join("; ")
        ),
    ))
}

/// Reads a metadata document: its `issuer` must be the configured one (OpenID Connect Discovery
/// §4.3, RFC 8414 §3.3) and every endpoint https (or http to loopback).
fn parse(account: &Account, issuer: &str, body: &[u8], now: u64) -> Result<Metadata, AuthError> {
    let mut metadata: Metadata = serde_json::from_slice(body).map_err(|e| {
        failed(
            account,
            format!(
                "the metadata of {issuer} is not a metadata document ({})",
                clean(&e.to_string(), SERVER_TEXT_MAX)
            ),
        )
    })?;
    if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(failed(
            account,
            format!(
                "the metadata fetched for {issuer} states another issuer, {} (refused: a server may speak only for itself)",
                clean(&metadata.issuer, SERVER_TEXT_MAX)
            ),
        ));
    }
    for (name, url) in [
        ("authorization_endpoint", &metadata.authorization_endpoint),
        ("token_endpoint", &metadata.token_endpoint),
        (
            "device_authorization_endpoint",
            &metadata.device_authorization_endpoint,
        ),
        ("revocation_endpoint", &metadata.revocation_endpoint),
    ] {
        if let Some(url) = url {
            crate::config::check_url(url).map_err(|e| {
                failed(
                    account,
                    format!(
                        "the metadata's {name} is unusable: {}",
                        clean(&e, SERVER_TEXT_MAX)
                    ),
                )
            })?;
        }
    }
    metadata.fetched_at = now;
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenID Connect appends, RFC 8414 inserts before the path.
    #[test]
    fn metadata_locations() {
        assert_eq!(
            metadata_urls("https://sso.example.org/realms/ops"),
            [
                "https://sso.example.org/realms/ops/.well-known/openid-configuration",
                "https://sso.example.org/.well-known/oauth-authorization-server/realms/ops"
            ]
        );
        assert_eq!(
            metadata_urls("https://login.example.com/"),
            [
                "https://login.example.com/.well-known/openid-configuration",
                "https://login.example.com/.well-known/oauth-authorization-server"
            ]
        );
    }

    /// Configured endpoints win; discovered ones fill the rest; iss is required only when promised.
    #[test]
    fn configured_endpoints_win() {
        let endpoints = Endpoints {
            issuer: Some("https://i.example".into()),
            auth_url: None,
            token_url: Some("https://mine.example/token".into()),
            device_url: None,
            revoke_url: None,
        };
        let metadata = Metadata {
            issuer: "https://i.example".into(),
            authorization_endpoint: Some("https://i.example/auth".into()),
            token_endpoint: Some("https://i.example/token".into()),
            device_authorization_endpoint: None,
            revocation_endpoint: Some("https://i.example/revoke".into()),
            authorization_response_iss_parameter_supported: true,
            fetched_at: 1,
        };
        let server = AuthServer::from(&endpoints, Some(&metadata)).expect("server");
        assert_eq!(server.token_url, "https://mine.example/token");
        assert_eq!(server.auth_url.as_deref(), Some("https://i.example/auth"));
        assert_eq!(server.device_url, None);
        assert!(server.iss_required);
        assert!(needs_discovery(&endpoints));
        assert!(
            !AuthServer::from(&endpoints, None)
                .expect("server")
                .iss_required
        );
    }
}

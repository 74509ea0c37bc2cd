//! The authorization server of `[accounts.NAME]`: its endpoints (preset, `issuer` for discovery,
//! explicit URLs), extra authorization parameters and the redirect URI a login uses.

use super::super::raw::RawAccount;
use super::super::{Endpoints, Provider};
use super::server::is_loopback;
use super::Problems;

/// Parameters mailpilot sets itself in an authorization request; `auth_params` may not replace
/// them (PKCE, state and the redirect are what make the login safe).
const OWN_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// Longest `auth_params` value.
const MAX_PARAM: usize = 1024;

/// Endpoints from the preset, `issuer` and the explicit URLs (which win over both).
pub(super) fn endpoints(
    raw: &RawAccount,
    provider: &Provider,
    at: &str,
    problems: &mut Problems,
) -> Option<Endpoints> {
    let mut url = |value: &Option<String>, preset: Option<String>, key: &str| -> Option<String> {
        let value = value.clone().or(preset)?;
        match check_url(&value) {
            Ok(()) => Some(value),
            Err(message) => {
                problems.push(format!("{at}.{key}"), message);
                None
            }
        }
    };
    let auth_url = url(&raw.auth_url, provider.auth_url(), "auth_url");
    let device_url = url(&raw.device_url, provider.device_url(), "device_url");
    let revoke_url = url(&raw.revoke_url, provider.revoke_url(), "revoke_url");
    let token_url = url(&raw.token_url, provider.token_url(), "token_url");
    let issuer = url(&raw.issuer, None, "issuer");
    if raw.device_url.is_some() && *provider == Provider::Google {
        problems.push(
            format!("{at}.device_url"),
            "Google does not allow Gmail scopes in the device flow; use `mailpilot auth login` (browser) or `--paste`",
        );
    }
    if let Some(issuer) = &issuer {
        if issuer.contains(['?', '#']) {
            problems.push(
                format!("{at}.issuer"),
                "an issuer has no query or fragment (RFC 8414 §2)",
            );
        }
    }
    if token_url.is_none() && raw.token_url.is_none() && raw.issuer.is_none() {
        problems.push(
            format!("{at}.token_url"),
            "missing (required for provider = \"custom\"): set it, or set `issuer` to discover it",
        );
    }
    Some(Endpoints {
        issuer,
        auth_url,
        token_url,
        device_url,
        revoke_url,
    })
}

/// `auth_params`: extra parameters of the authorization request, in order; a parameter mailpilot
/// sets for safety is refused.
pub(super) fn auth_params(
    raw: &RawAccount,
    at: &str,
    problems: &mut Problems,
) -> Vec<(String, String)> {
    let Some(params) = &raw.auth_params else {
        return Vec::new();
    };
    let path = format!("{at}.auth_params");
    let mut out = Vec::new();
    for (key, value) in params {
        if OWN_PARAMS.contains(&key.as_str()) {
            problems.push(
                format!("{path}.{key}"),
                "mailpilot sets this parameter itself (PKCE, state, scopes and redirect make the login safe): use `scopes` or `redirect_uri` instead",
            );
        } else if key.is_empty()
            || value.len() > MAX_PARAM
            || value.chars().chain(key.chars()).any(char::is_control)
        {
            problems.push(
                format!("{path}.{key}"),
                format!("give a name and a value of at most {MAX_PARAM} characters, without control characters"),
            );
        } else {
            out.push((key.clone(), value.clone()));
        }
    }
    out
}

/// `redirect_uri`: where the browser is sent back, when a client registration needs a given one
/// (`http://localhost:8080/callback`); plain http to a loopback host (RFC 8252 §7.3), the port
/// optional (then any free one, for registrations that allow any port).
pub(super) fn redirect_uri(
    raw: &RawAccount,
    at: &str,
    problems: &mut Problems,
) -> Option<url::Url> {
    let value = raw.redirect_uri.as_ref()?;
    let path = format!("{at}.redirect_uri");
    let url = match url::Url::parse(value) {
        Ok(url) => url,
        Err(e) => {
            problems.push(path, format!("\"{value}\" is not a URL ({e})"));
            return None;
        }
    };
    let loopback = url.scheme() == "http" && url.host_str().is_some_and(is_loopback);
    if !loopback || url.query().is_some() || url.fragment().is_some() {
        problems.push(
            path,
            format!("\"{value}\": mailpilot receives the answer itself, so the redirect is http:// to localhost, 127.0.0.1 or [::1] (a port and a path may follow; no query)"),
        );
        return None;
    }
    Some(url)
}

/// `https://`, or `http://` to a loopback host (test servers).
///
/// # Errors
/// The message saying what is wrong with `value`.
pub(crate) fn check_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("\"{value}\" is not a URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback) => Ok(()),
        "http" => Err(format!(
            "\"{value}\" uses plain http: tokens would travel unencrypted (http is allowed only to a loopback host)"
        )),
        other => Err(format!("\"{value}\": unsupported scheme \"{other}\" (expected https)")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::super::tests::problems;
    use crate::config::{Cloud, Provider};
    use std::path::Path;

    /// An issuer replaces token_url; login parameters and the redirect are kept as given.
    #[test]
    fn issuer_and_login_settings() {
        let config = parse(
            r#"
            [accounts.a]
            provider = "custom"
            email = "a@example.com"
            client_id = "id"
            issuer = "https://sso.example.org/realms/ops"
            auth_params = { prompt = "login", acr_values = "mfa" }
            redirect_uri = "http://localhost:8400/callback"
            [accounts.m]
            provider = "microsoft"
            cloud = "usgov-dod"
            tenant = "contoso.onmicrosoft.us"
            email = "m@contoso.us"
            client_id = "id"
            "#,
            Path::new("/etc/mailpilot/config.toml"),
            false,
        )
        .expect("valid");
        let a = config.account("a").expect("a");
        assert_eq!(a.endpoints.token_url, None);
        assert_eq!(
            a.endpoints.issuer.as_deref(),
            Some("https://sso.example.org/realms/ops")
        );
        assert_eq!(
            a.auth_params,
            [
                ("acr_values".to_string(), "mfa".to_string()),
                ("prompt".to_string(), "login".to_string())
            ]
        );
        assert_eq!(
            a.redirect_uri.as_ref().map(url::Url::as_str),
            Some("http://localhost:8400/callback")
        );
        let m = config.account("m").expect("m");
        assert!(matches!(
            m.provider,
            Provider::Microsoft {
                cloud: Cloud::UsGovDod,
                ..
            }
        ));
        assert_eq!(
            m.smtp.as_ref().map(|s| s.host.as_str()),
            Some("outlook-dod.office365.us")
        );
    }

    /// Parameters that keep the login safe cannot be replaced; redirects go to loopback only; a
    /// cloud is Microsoft's.
    #[test]
    fn refused_settings() {
        let p = problems(
            r#"
            [accounts.a]
            provider = "custom"
            email = "a@example.com"
            client_id = "id"
            issuer = "http://sso.example.org"
            auth_params = { state = "x", code_challenge_method = "plain" }
            redirect_uri = "https://app.example.org/callback"
            cloud = "usgov"
            [accounts.m]
            provider = "microsoft"
            email = "m@example.com"
            client_id = "id"
            cloud = "gcc"
            "#,
        );
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(
            p[0].starts_with("accounts.a.cloud: only used with provider = \"microsoft\""),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("accounts.a.issuer: \"http://sso.example.org\" uses plain http"),
            "{p:?}"
        );
        assert!(p[2].starts_with("accounts.a.auth_params.code_challenge_method: mailpilot sets this parameter itself"), "{p:?}");
        assert!(
            p[3].starts_with("accounts.a.auth_params.state: mailpilot sets this parameter itself"),
            "{p:?}"
        );
        assert!(p[4].starts_with("accounts.a.redirect_uri: \"https://app.example.org/callback\": mailpilot receives the answer itself"), "{p:?}");
        assert!(p[5].starts_with("accounts.m.cloud: unknown value \"gcc\" (expected one of \"global\", \"usgov\", \"usgov-dod\", \"china\""), "{p:?}");
    }
}

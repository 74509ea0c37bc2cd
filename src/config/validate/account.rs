//! `[accounts.NAME]`: who the account is (provider, email, client), where its secret comes from,
//! its scopes and endpoints (presets plus overrides), its timings and servers.

use std::path::Path;
use std::time::Duration;

use super::super::raw::{field_names, RawAccount, RawServer};
use super::super::{
    Account, ClientAuth, ClientCertificate, Cloud, Grant, Protocol, Provider, ProviderKind, Proxy,
    SecretSource, Server, Spelled,
};
use super::server::{server, ServerCtx};
use super::suggest::quoted;
use super::{choice, deserialize_collecting, duration, endpoints, required, valid_name, Problems};

/// Default for `refresh_margin`: refresh a token with less than 5 minutes left, so a command that
/// starts with it still has minutes of validity for its SMTP/IMAP login.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Largest `refresh_margin`: Google tokens live 3599 s, so a margin near an hour would refresh on
/// every call.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);
/// Default for `token_timeout`: generous for a slow link, short enough for cron.
const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `max_message_size`: far above real mail (providers cap messages at 25–150 MB
/// including encoding), far below what would strain a small host.
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50_000_000;
/// Largest `max_message_size`.
const MAX_MESSAGE_SIZE: u64 = 2_000_000_000;
/// Largest `token_timeout`.
const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(300);

/// Where an account table sits.
pub(super) struct AccountCtx<'a> {
    /// `accounts.NAME`.
    pub at: &'a str,
    /// `NAME`.
    pub name: &'a str,
    /// The config file's directory (relative paths).
    pub dir: &'a Path,
    /// Whether the config file is world-readable (inline secrets are refused then).
    pub world_readable: bool,
    /// The file's `proxy`, for accounts without their own.
    pub proxy: Option<&'a Proxy>,
}

/// `[accounts.NAME]` → [`Account`], or `None` after recording its problems.
pub(super) fn account(
    value: toml::Value,
    ctx: &AccountCtx<'_>,
    problems: &mut Problems,
) -> Option<Account> {
    let at = ctx.at;
    if !valid_name(ctx.name) {
        problems.push(
            at,
            "account names may use letters, digits, '.', '_' and '-' (and start with a letter or digit); the name is used in file names",
        );
    }
    let known = |parent: &str| match Protocol::from_name(parent) {
        Some(_) => field_names::<RawServer>(),
        None => field_names::<RawAccount>(),
    };
    let raw: RawAccount = deserialize_collecting(value, at, known, problems)?;
    let before = problems.count();

    let provider = provider(&raw, at, problems);
    let (email, sign_in_as, from) = identities(&raw, at, problems);
    // A service account is named by its key file; it has no client id of its own to give.
    let service_account =
        raw.grant.as_deref().and_then(Grant::from_name) == Some(Grant::ServiceAccount);
    let client_id = if service_account && raw.client_id.is_none() {
        Some(String::new())
    } else {
        required(raw.client_id.clone(), &format!("{at}.client_id"), problems)
    };
    let client_secret = secret_source(&raw, ctx, problems);
    let client_certificate = certificate(&raw, ctx, problems);
    let client_auth = match raw.client_auth.as_deref() {
        None => provider.as_ref().map(Provider::client_auth),
        Some(word) => choice::<ClientAuth>(word, &format!("{at}.client_auth"), problems),
    };
    let service_account_file = service_account_key(&raw, ctx, service_account, problems);
    let credentials = (client_secret.is_some(), client_certificate.is_some());
    let grant = grant(&raw, provider.as_ref(), credentials, at, problems);
    let scopes = scopes(&raw, provider.as_ref(), grant, at, problems);
    let endpoints = provider
        .as_ref()
        .and_then(|p| endpoints::endpoints(&raw, p, at, problems));
    let auth_params = endpoints::auth_params(&raw, at, problems);
    let redirect_uri = endpoints::redirect_uri(&raw, at, problems);
    let (refresh_margin, token_timeout, max_message_size) = limits(&raw, at, problems);
    let (proxy, ca_file) = network(&raw, ctx, problems);
    let (smtp, imap) = match &provider {
        Some(p) => servers(&raw, p, ctx, (&proxy, &ca_file), problems),
        None => (None, None),
    };
    if problems.count() > before {
        return None;
    }
    let provider = provider?;
    Some(Account {
        name: ctx.name.to_string(),
        provider,
        grant,
        email: email?,
        sign_in_as,
        from,
        client_id: client_id?,
        client_secret,
        client_auth: client_auth?,
        client_certificate,
        service_account: service_account_file,
        scopes: scopes?,
        endpoints: endpoints?,
        auth_params,
        redirect_uri,
        proxy,
        ca_file,
        refresh_margin,
        token_timeout,
        max_message_size,
        smtp,
        imap,
    })
}

/// The three identities: `email` (the mailbox; required), `sign_in_as` and `from` (optional).
fn identities(
    raw: &RawAccount,
    at: &str,
    problems: &mut Problems,
) -> (Option<String>, Option<String>, Option<String>) {
    let email = required(raw.email.clone(), &format!("{at}.email"), problems);
    if let Some(email) = &email {
        if !valid_email(email) {
            problems.push(
                format!("{at}.email"),
                format!("\"{email}\" is not an email address"),
            );
        }
    }
    let sign_in_as = optional_address(
        raw.sign_in_as.as_deref(),
        &format!("{at}.sign_in_as"),
        problems,
    );
    let from = optional_address(raw.from.as_deref(), &format!("{at}.from"), problems);
    (email, sign_in_as, from)
}

/// `refresh_margin`, `token_timeout` and `max_message_size`, with their defaults.
fn limits(raw: &RawAccount, at: &str, problems: &mut Problems) -> (Duration, Duration, u64) {
    let refresh_margin = duration(
        raw.refresh_margin.as_deref(),
        DEFAULT_REFRESH_MARGIN,
        (Duration::ZERO, MAX_REFRESH_MARGIN),
        &format!("{at}.refresh_margin"),
        problems,
    );
    let token_timeout = duration(
        raw.token_timeout.as_deref(),
        DEFAULT_TOKEN_TIMEOUT,
        (Duration::from_secs(1), MAX_TOKEN_TIMEOUT),
        &format!("{at}.token_timeout"),
        problems,
    );
    let max_message_size = message_size(
        raw.max_message_size.as_ref(),
        &format!("{at}.max_message_size"),
        &ACCOUNT_SIZE,
        problems,
    );
    (refresh_margin, token_timeout, max_message_size)
}

/// `grant`, checked against what it needs: the app's own credentials (a client secret, for
/// now) and, at Microsoft, a real tenant (app-only tokens are issued by the tenant that consented).
fn grant(
    raw: &RawAccount,
    provider: Option<&Provider>,
    (has_secret, has_certificate): (bool, bool),
    at: &str,
    problems: &mut Problems,
) -> Grant {
    let path = format!("{at}.grant");
    let grant = match raw.grant.as_deref() {
        None => Grant::AuthorizationCode,
        Some(word) => choice(word, &path, problems).unwrap_or(Grant::AuthorizationCode),
    };
    if grant == Grant::ServiceAccount {
        if let Some(Provider::Microsoft { .. }) = provider {
            problems.push(
                &path,
                "service_account is Google's domain-wide delegation; for Microsoft 365 use grant = \"client_credentials\"",
            );
        }
    }
    if has_certificate && grant != Grant::ClientCredentials {
        problems.push(
            format!("{at}.client_certificate_file"),
            "a certificate signs the app's own token requests: only with grant = \"client_credentials\"",
        );
    }
    if grant == Grant::ClientCredentials {
        match (has_secret, has_certificate) {
            (false, false) => problems.push(
                &path,
                "client_credentials needs the app's client secret (client_secret_env, client_secret_file or client_secret_cmd) or its certificate (client_certificate_file and client_key_file)",
            ),
            (true, true) => problems.push(
                at,
                "give the app a client secret or a certificate, not both",
            ),
            _ => {}
        }
        if let Some(Provider::Microsoft { tenant, .. }) = provider {
            if ["common", "organizations", "consumers"].contains(&tenant.as_str()) {
                problems.push(
                    format!("{at}.tenant"),
                    format!("app-only tokens come from your own tenant, not \"{tenant}\": set tenant to its id or domain (e.g. \"contoso.onmicrosoft.com\")"),
                );
            }
        }
    }
    grant
}

/// `service_account_file`: required with `grant = "service_account"`, and only then.
fn service_account_key(
    raw: &RawAccount,
    ctx: &AccountCtx<'_>,
    wanted: bool,
    problems: &mut Problems,
) -> Option<std::path::PathBuf> {
    let path = format!("{}.service_account_file", ctx.at);
    match (&raw.service_account_file, wanted) {
        (None, false) => None,
        (Some(_), false) => {
            problems.push(path, "only used with grant = \"service_account\"");
            None
        }
        (None, true) => {
            problems.push(
                path,
                "missing: the service account's JSON key file (Google Cloud console → IAM → Service accounts → Keys)",
            );
            None
        }
        (Some(file), true) => {
            let file = ctx.dir.join(file);
            if !file.is_file() {
                problems.push(path, format!("{} is not a readable file", file.display()));
            }
            Some(file)
        }
    }
}

/// `client_certificate_file` and `client_key_file`, together, both readable files.
fn certificate(
    raw: &RawAccount,
    ctx: &AccountCtx<'_>,
    problems: &mut Problems,
) -> Option<ClientCertificate> {
    let at = ctx.at;
    let (certificate, key) = match (&raw.client_certificate_file, &raw.client_key_file) {
        (None, None) => return None,
        (Some(c), Some(k)) => (ctx.dir.join(c), ctx.dir.join(k)),
        (Some(_), None) => {
            problems.push(
                format!("{at}.client_key_file"),
                "missing: the certificate's private key (PEM)",
            );
            return None;
        }
        (None, Some(_)) => {
            problems.push(
                format!("{at}.client_certificate_file"),
                "missing: the certificate (PEM) registered for the app",
            );
            return None;
        }
    };
    for (key_name, path) in [
        ("client_certificate_file", &certificate),
        ("client_key_file", &key),
    ] {
        if !path.is_file() {
            problems.push(
                format!("{at}.{key_name}"),
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    Some(ClientCertificate { certificate, key })
}

/// The default and upper bound of a `max_message_size` key (an account's, the relay's).
pub(super) struct SizeRule {
    /// When the key is absent or unusable.
    pub default: u64,
    /// The largest size taken (the smallest is 1 KiB).
    pub max: u64,
    /// `max` as the error message says it (`"2GB"`).
    pub max_text: &'static str,
}

/// An account's `max_message_size`.
const ACCOUNT_SIZE: SizeRule = SizeRule {
    default: DEFAULT_MAX_MESSAGE_SIZE,
    max: MAX_MESSAGE_SIZE,
    max_text: "2GB",
};

/// `max_message_size` at `path`: bytes (`50000000`) or a size with a unit (`"50MB"`, `"64MiB"`).
pub(super) fn message_size(
    value: Option<&toml::Value>,
    path: &str,
    rule: &SizeRule,
    problems: &mut Problems,
) -> u64 {
    let bytes = match value {
        None => return rule.default,
        Some(toml::Value::Integer(n)) => u64::try_from(*n).ok(),
        Some(toml::Value::String(s)) => parse_size(s),
        Some(other) => {
            problems.push(
                path,
                format!(
                    "expected a size such as \"50MB\", found {}",
                    other.type_str()
                ),
            );
            return rule.default;
        }
    };
    match bytes {
        Some(b) if (1024..=rule.max).contains(&b) => b,
        _ => {
            problems.push(
                path,
                format!(
                    "{} is not a size from 1KiB to {} (write e.g. \"50MB\" or \"64MiB\")",
                    value.map(ToString::to_string).unwrap_or_default(),
                    rule.max_text
                ),
            );
            rule.default
        }
    }
}

/// `"50MB"` → 50,000,000; `"64MiB"` → 67,108,864; `"1024"` → 1024. Units: B, KB, MB, GB (powers of
/// 1000), KiB, MiB, GiB (powers of 1024), any case.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// The account's SMTP and IMAP servers.
/// The account's SMTP and IMAP servers, with its `network` settings (proxy, ca_file).
fn servers(
    raw: &RawAccount,
    provider: &Provider,
    ctx: &AccountCtx<'_>,
    network: (&Option<Proxy>, &Option<std::path::PathBuf>),
    problems: &mut Problems,
) -> (Option<Server>, Option<Server>) {
    let mut one = |protocol: Protocol, given: Option<&RawServer>, preset| {
        let path = format!("{}.{protocol}", ctx.at);
        let server_ctx = ServerCtx {
            path: &path,
            protocol,
            provider,
            dir: ctx.dir,
        };
        server(given, preset, &server_ctx, problems)
    };
    let (proxy, ca_file) = network;
    (
        inherit(
            one(Protocol::Smtp, raw.smtp.as_ref(), provider.smtp()),
            proxy,
            ca_file,
        ),
        inherit(
            one(Protocol::Imap, raw.imap.as_ref(), provider.imap()),
            proxy,
            ca_file,
        ),
    )
}

/// The account's proxy and ca_file serve its servers too (a server's own ca_file wins).
fn inherit(
    server: Option<Server>,
    proxy: &Option<Proxy>,
    ca_file: &Option<std::path::PathBuf>,
) -> Option<Server> {
    server.map(|mut s| {
        s.proxy.clone_from(proxy);
        if s.ca_file.is_none() {
            s.ca_file.clone_from(ca_file);
        }
        s
    })
}

/// The account's `proxy` (its own, `"direct"` for none, else the file's) and `ca_file`.
fn network(
    raw: &RawAccount,
    ctx: &AccountCtx<'_>,
    problems: &mut Problems,
) -> (Option<Proxy>, Option<std::path::PathBuf>) {
    let at = ctx.at;
    let proxy = match raw.proxy.as_deref() {
        Some("direct") => None,
        Some(text) => proxy(text, &format!("{at}.proxy"), ctx.world_readable, problems),
        None => ctx.proxy.cloned(),
    };
    let ca_file = raw.ca_file.as_ref().map(|f| ctx.dir.join(f));
    if let Some(f) = ca_file.as_ref().filter(|f| !f.is_file()) {
        problems.push(
            format!("{at}.ca_file"),
            format!("{} is not a readable file", f.display()),
        );
    }
    (proxy, ca_file)
}

/// A proxy URL at `path`; one with a password is refused in a world-readable file, as inline
/// secrets are.
pub(super) fn proxy(
    text: &str,
    path: &str,
    world_readable: bool,
    problems: &mut Problems,
) -> Option<Proxy> {
    match Proxy::parse(text) {
        Ok(p) if world_readable && p.credentials.is_some() => {
            problems.push(
                path,
                "the proxy password is in a world-readable file: `chmod 600` the file",
            );
            None
        }
        Ok(p) => Some(p),
        Err(message) => {
            problems.push(path, message);
            None
        }
    }
}

/// An optional address key (`sign_in_as`, `from`): `addr` or `Name <addr>`.
fn optional_address(value: Option<&str>, path: &str, problems: &mut Problems) -> Option<String> {
    let value = value?;
    let addr = match value.rsplit_once('<') {
        Some((_, rest)) => rest.strip_suffix('>').unwrap_or("").trim(),
        None => value.trim(),
    };
    if !valid_email(addr) || value.contains(['\r', '\n']) {
        problems.push(
            path,
            format!("\"{value}\" is not an address (write \"a@example.com\" or \"Name <a@example.com>\")"),
        );
        return None;
    }
    Some(value.to_string())
}

fn valid_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        }
        None => false,
    }
}

fn provider(raw: &RawAccount, at: &str, problems: &mut Problems) -> Option<Provider> {
    let path = format!("{at}.provider");
    let Some(word) = raw.provider.as_deref() else {
        problems.push(
            path,
            format!(
                "missing (required): one of {}",
                quoted(&ProviderKind::names())
            ),
        );
        return None;
    };
    let provider = match choice::<ProviderKind>(word, &path, problems)? {
        ProviderKind::Google => Provider::Google,
        ProviderKind::Custom => Provider::Custom,
        ProviderKind::Microsoft => {
            let tenant = raw.tenant.clone().unwrap_or_else(|| "common".into());
            if tenant.is_empty()
                || !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            {
                problems.push(
                    format!("{at}.tenant"),
                    format!("\"{tenant}\" is not a tenant: use \"common\", \"organizations\", \"consumers\", a tenant id or a domain"),
                );
            }
            let cloud = match raw.cloud.as_deref() {
                None => Cloud::Global,
                Some(word) => choice::<Cloud>(word, &format!("{at}.cloud"), problems)?,
            };
            return Some(Provider::Microsoft { tenant, cloud });
        }
    };
    for (key, set) in [
        ("tenant", raw.tenant.is_some()),
        ("cloud", raw.cloud.is_some()),
    ] {
        if set {
            problems.push(
                format!("{at}.{key}"),
                "only used with provider = \"microsoft\"",
            );
        }
    }
    Some(provider)
}

fn secret_source(
    raw: &RawAccount,
    ctx: &AccountCtx<'_>,
    problems: &mut Problems,
) -> Option<SecretSource> {
    let at = ctx.at;
    let mut sources = Vec::new();
    if let Some(secret) = &raw.client_secret {
        sources.push(("client_secret", SecretSource::Inline(secret.clone())));
        if ctx.world_readable {
            problems.push(
                format!("{at}.client_secret"),
                "an inline secret in a world-readable file is refused: run `chmod 600` on the config file, or use client_secret_env, client_secret_file or client_secret_cmd",
            );
        }
    }
    if let Some(var) = &raw.client_secret_env {
        sources.push(("client_secret_env", SecretSource::Env(var.clone())));
    }
    if let Some(file) = &raw.client_secret_file {
        sources.push(("client_secret_file", SecretSource::File(ctx.dir.join(file))));
    }
    if let Some(cmd) = &raw.client_secret_cmd {
        sources.push(("client_secret_cmd", SecretSource::Cmd(cmd.clone())));
    }
    if sources.len() > 1 {
        let names: Vec<_> = sources.iter().map(|(n, _)| *n).collect();
        problems.push(
            at,
            format!(
                "give the client secret one way, not {}",
                names.join(" and ")
            ),
        );
    }
    sources.pop().map(|(_, s)| s)
}

fn scopes(
    raw: &RawAccount,
    provider: Option<&Provider>,
    grant: Grant,
    at: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let path = format!("{at}.scopes");
    let scopes = match (&raw.scopes, provider) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => p.scopes(grant),
        (None, None) => return None,
    };
    if scopes
        .iter()
        .any(|s| s.trim().is_empty() || s.contains(' '))
    {
        problems.push(&path, "give one scope per string, without spaces");
    }
    if let (Some(Provider::Microsoft { .. }), Grant::ClientCredentials) = (provider, grant) {
        // Entra issues app-only tokens only for the `.default` scope of a resource.
        if !scopes.iter().any(|s| s.ends_with("/.default")) {
            problems.push(
                &path,
                "client_credentials needs the resource's .default scope: [\"https://outlook.office365.com/.default\"]",
            );
        }
    } else if let Some(Provider::Microsoft { cloud, .. }) = provider {
        let global = *cloud == Cloud::Global;
        if let Some(bad) = scopes
            .iter()
            .find(|s| global && s.contains("outlook.office365.com"))
        {
            problems.push(
                &path,
                format!("\"{bad}\" has the wrong host: Microsoft mail scopes are https://outlook.office.com/..."),
            );
        }
        if !scopes.iter().any(|s| s == "offline_access") {
            problems.push(
                &path,
                "\"offline_access\" is missing: without it Microsoft issues no refresh token",
            );
        }
    }
    Some(scopes)
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::super::tests::problems;
    use super::DEFAULT_REFRESH_MARGIN;
    use crate::config::Tls;
    use std::path::Path;

    const GOOD: &str = r#"
        [accounts.work]
        provider = "google"
        email = "ops@example.com"
        client_id = "id"
        client_secret_env = "SECRET"
    "#;

    /// A minimal Google account gets the preset's endpoints and servers.
    #[test]
    fn preset_fills_everything() {
        let cfg = parse(GOOD, Path::new("/c.toml"), false).expect("valid");
        let a = &cfg.accounts["work"];
        assert_eq!(
            a.endpoints.token_url.as_deref(),
            Some("https://oauth2.googleapis.com/token")
        );
        let smtp = a.smtp.as_ref().expect("smtp");
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("smtp.gmail.com", 465, Tls::Implicit)
        );
        assert_eq!(a.refresh_margin, DEFAULT_REFRESH_MARGIN);
        assert!(!a.provider.scope_on_refresh());
    }

    /// Sizes take units; nonsense and out-of-range sizes are problems with the key path.
    #[test]
    fn message_sizes() {
        assert_eq!(super::parse_size("50MB"), Some(50_000_000));
        assert_eq!(super::parse_size("64 MiB"), Some(64 << 20));
        assert_eq!(super::parse_size("1024"), Some(1024));
        assert_eq!(super::parse_size("5 parsecs"), None);
        let text = format!("{GOOD}max_message_size = \"9TB\"\n");
        assert_eq!(
            problems(&text),
            ["accounts.work.max_message_size: \"9TB\" is not a size from 1KiB to 2GB (write e.g. \"50MB\" or \"64MiB\")"]
        );
        let cfg = parse(
            &format!("{GOOD}max_message_size = 2048\n"),
            Path::new("/c.toml"),
            false,
        )
        .expect("valid");
        assert_eq!(cfg.accounts["work"].max_message_size, 2048);
    }

    /// Enumerated values suggest the closest spelling.
    #[test]
    fn enum_suggestion() {
        let p = problems(
            r#"
            [accounts.work]
            provider = "gogle"
            email = "ops@example.com"
            client_id = "id"
            "#,
        );
        assert_eq!(
            p,
            ["accounts.work.provider: unknown value \"gogle\" (expected one of \"google\", \"microsoft\", \"custom\"; did you mean \"google\"?)"]
        );
    }

    /// A custom provider needs its token endpoint; plain http is refused off loopback.
    #[test]
    fn custom_endpoints() {
        let p = problems(
            r#"
            [accounts.a]
            provider = "custom"
            email = "a@example.com"
            client_id = "id"
            [accounts.b]
            provider = "custom"
            email = "b@example.com"
            client_id = "id"
            token_url = "http://auth.example.com/token"
            [accounts.c]
            provider = "custom"
            email = "c@example.com"
            client_id = "id"
            token_url = "http://127.0.0.1:9/token"
            "#,
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            "accounts.a.token_url: missing (required for provider = \"custom\"): set it, or set `issuer` to discover it"
        );
        assert!(p[1].starts_with(
            "accounts.b.token_url: \"http://auth.example.com/token\" uses plain http"
        ));
    }

    /// Inline secrets are refused in world-readable files and two secret sources conflict.
    #[test]
    fn secret_rules() {
        let text = r#"
            [accounts.work]
            provider = "google"
            email = "ops@example.com"
            client_id = "id"
            client_secret = "s3cr3t"
            client_secret_env = "X"
        "#;
        let p: Vec<String> = parse(text, Path::new("/c.toml"), true)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with(
            "accounts.work.client_secret: an inline secret in a world-readable file is refused"
        ));
        assert_eq!(p[1], "accounts.work: give the client secret one way, not client_secret and client_secret_env");
        assert!(!p.join("").contains("s3cr3t"));
    }

    /// `Debug` of the validated config never shows an inline secret.
    #[test]
    fn debug_redacts_inline_secret() {
        let text = format!("{GOOD}client_secret = \"GOCSPX-do-not-print\"\n")
            .replace("client_secret_env = \"SECRET\"\n", "");
        let cfg = parse(&text, Path::new("/c.toml"), false).expect("valid");
        let debug = format!("{cfg:?}");
        assert!(debug.contains("Inline([redacted])"), "{debug}");
        assert!(!debug.contains("GOCSPX-do-not-print"));
    }
}

//! `mailpilot config check`: validate and show the resolved configuration.

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::config::{Account, Cloud, Protocol, Server, Spelled};
use crate::exit::Exit;
use crate::oauth::TokenStore;
use crate::output::JSON_SCHEMA_VERSION;

/// Validates the configuration (reporting every problem with its key path) and prints it with
/// presets applied and secrets redacted. Reads no secret and makes no network request.
#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Serialize)]
struct ConfigJson {
    version: u32,
    config: String,
    state_dir: String,
    /// `files` or `postgres`.
    state_backend: &'static str,
    /// The database (`host:port/db`) and schema, with backend `postgres`.
    state_database: Option<String>,
    /// The id of the key tokens are sealed with (`null`: plain 0600 files).
    state_key: Option<String>,
    accounts: Vec<AccountJson>,
    sendmail: SendmailJson,
    /// `[relay]` (`null` without one).
    relay: Option<RelayJson>,
}

#[derive(Serialize)]
struct RelayJson {
    listen: Vec<String>,
    listen_tls: Vec<String>,
    tls_cert_file: Option<String>,
    max_message_size: u64,
    max_recipients: usize,
    max_connections: usize,
    idle_timeout_secs: u64,
    command_timeout_secs: u64,
    /// Unauthenticated loopback clients (`null` unless `allow_loopback_without_auth`).
    loopback_without_auth: Option<RelaySenderJson>,
    users: Vec<RelaySenderJson>,
}

/// A relay user without its hash.
#[derive(Serialize)]
struct RelaySenderJson {
    name: Option<String>,
    account: String,
    allowed_from: Vec<String>,
}

fn relay_json(relay: &crate::config::Relay) -> RelayJson {
    let sender = |name: Option<&String>, u: &crate::config::RelayUser| RelaySenderJson {
        name: name.cloned(),
        account: u.account.clone(),
        allowed_from: u.allowed_from.patterns().to_vec(),
    };
    RelayJson {
        listen: relay.listen.iter().map(ToString::to_string).collect(),
        listen_tls: relay.listen_tls.iter().map(ToString::to_string).collect(),
        tls_cert_file: relay.tls.as_ref().map(|(c, _)| c.display().to_string()),
        max_message_size: relay.max_message_size,
        max_recipients: relay.max_recipients,
        max_connections: relay.max_connections,
        idle_timeout_secs: relay.idle_timeout.as_secs(),
        command_timeout_secs: relay.command_timeout.as_secs(),
        loopback_without_auth: relay.anonymous.as_ref().map(|u| sender(None, u)),
        users: relay
            .users
            .iter()
            .map(|(n, u)| sender(Some(n), u))
            .collect(),
    }
}

/// The relay in one line per part.
fn relay_human(r: &RelayJson) -> Vec<String> {
    let tls = if r.tls_cert_file.is_some() {
        "STARTTLS"
    } else {
        "no TLS"
    };
    let mut listen: Vec<String> = r.listen.iter().map(|a| format!("{a} ({tls})")).collect();
    listen.extend(r.listen_tls.iter().map(|a| format!("{a} (implicit TLS)")));
    let mut lines = vec![format!(
        "relay: listen {}, max_message_size {}, max_recipients {}, max_connections {}",
        listen.join(", "),
        r.max_message_size,
        r.max_recipients,
        r.max_connections
    )];
    for u in &r.users {
        lines.push(format!(
            "  user {} → account {}, From {}",
            u.name.as_deref().unwrap_or_default(),
            u.account,
            u.allowed_from.join(", ")
        ));
    }
    if let Some(a) = &r.loopback_without_auth {
        lines.push(format!(
            "  loopback clients without AUTH → account {}, From {}",
            a.account,
            a.allowed_from.join(", ")
        ));
    }
    lines
}

#[derive(Serialize)]
struct SendmailJson {
    /// The account `sendmail` uses (`null` when it cannot choose: several and none named).
    account: Option<String>,
    aliases: std::collections::BTreeMap<String, String>,
    rewrite_from: &'static str,
    max_age_secs: u64,
    warn_after_secs: u64,
}

#[derive(Serialize)]
struct AccountJson {
    name: String,
    provider: &'static str,
    grant: &'static str,
    tenant: Option<String>,
    cloud: Option<&'static str>,
    email: String,
    sign_in_as: Option<String>,
    from: Option<String>,
    client_id: String,
    client_secret: String,
    client_auth: &'static str,
    scopes: Vec<String>,
    issuer: Option<String>,
    auth_url: Option<String>,
    token_url: Option<String>,
    auth_params: std::collections::BTreeMap<String, String>,
    redirect_uri: Option<String>,
    proxy: Option<String>,
    ca_file: Option<String>,
    device_url: Option<String>,
    revoke_url: Option<String>,
    refresh_margin_secs: u64,
    token_timeout_secs: u64,
    max_message_size: u64,
    smtp: Option<ServerJson>,
    imap: Option<ServerJson>,
}

#[derive(Serialize)]
struct ServerJson {
    host: String,
    port: u16,
    tls: &'static str,
    mechanism: &'static str,
    ca_file: Option<String>,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// The configuration is missing or invalid (exit 2, every problem listed).
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let problems: Vec<crate::error::Problem> = config
            .jobs
            .values()
            .filter_map(|job| crate::cli::parse_job(job).err())
            .map(|e| {
                let text = e.to_string();
                let (path, message) = text.split_once(": ").unwrap_or(("jobs", text.as_str()));
                crate::error::Problem {
                    path: path.to_string(),
                    message: message.to_string(),
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(crate::error::ConfigError::Invalid {
                path: config.path.clone(),
                problems,
            }
            .into());
        }
        let state_dir = ctx.state_dir()?;
        let key = ctx.state_key()?;
        let key_id = key.as_ref().map(|k| k.id().to_string());
        let (state_backend, state_database) = backend(ctx, &config)?;
        if key.is_some() {
            warn_unsealed(ctx, &config).await?;
        }
        let accounts: Vec<AccountJson> = config.accounts.values().map(account_json).collect();
        let only = match config.accounts.keys().collect::<Vec<_>>().as_slice() {
            [only] => Some((*only).clone()),
            _ => None,
        };
        let sendmail = SendmailJson {
            account: config.sendmail.account.clone().or(only),
            aliases: config.sendmail.aliases.clone(),
            rewrite_from: config.sendmail.rewrite_from.name(),
            max_age_secs: config.sendmail.max_age.as_secs(),
            warn_after_secs: config.sendmail.warn_after.as_secs(),
        };
        let relay = config.relay.as_ref().map(relay_json);
        if ctx.out.is_json() {
            ctx.out.json(&ConfigJson {
                version: JSON_SCHEMA_VERSION,
                config: config.path.display().to_string(),
                state_dir: state_dir.display().to_string(),
                state_backend,
                state_database,
                state_key: key_id,
                accounts,
                sendmail,
                relay,
            })?;
            return Ok(Exit::Success);
        }
        ctx.out
            .data(&format!("config: {}", config.path.display()))?;
        ctx.out.data(&state_line(
            &state_dir,
            state_database.as_deref(),
            key_id.as_deref(),
        ))?;
        for a in &accounts {
            ctx.out.data("")?;
            for line in human(a) {
                ctx.out.data(&line)?;
            }
        }
        ctx.out.data("")?;
        ctx.out.data(&sendmail_human(&sendmail))?;
        for line in relay.iter().flat_map(relay_human) {
            ctx.out.data(&line)?;
        }
        ctx.out.info(&format!(
            "configuration OK ({} account{})",
            accounts.len(),
            if accounts.len() == 1 { "" } else { "s" }
        ));
        Ok(Exit::Success)
    }
}

/// `[sendmail]` in one line.
fn sendmail_human(sendmail: &SendmailJson) -> String {
    let aliases: Vec<String> = sendmail
        .aliases
        .iter()
        .map(|(k, v)| format!("{k} → {v}"))
        .collect();
    format!(
        "sendmail: account {}, aliases [{}], rewrite_from {}, max_age {}, warn_after {}",
        sendmail
            .account
            .as_deref()
            .unwrap_or("(none: set [sendmail] account)"),
        aliases.join(", "),
        sendmail.rewrite_from,
        humantime::format_duration(std::time::Duration::from_secs(sendmail.max_age_secs)),
        humantime::format_duration(std::time::Duration::from_secs(sendmail.warn_after_secs))
    )
}

/// `files` or `postgres`, and for the database its `host:port/db, schema s`.
fn backend(ctx: &Ctx, config: &crate::config::Config) -> Result<(&'static str, Option<String>)> {
    Ok(match &config.state.backend {
        crate::config::Backend::Files => ("files", None),
        crate::config::Backend::Postgres(pg) => {
            let db = ctx.db(pg)?;
            let place = format!("{}, schema {}", db.target(), db.schema());
            ("postgres", Some(place))
        }
    })
}

/// `state:  WHERE (how the tokens are kept)`.
fn state_line(dir: &std::path::Path, database: Option<&str>, key_id: Option<&str>) -> String {
    let sealing = match (key_id, database) {
        (Some(id), _) => format!("tokens sealed with key {id}"),
        (None, None) => "tokens in plain files, mode 0600; [state] key_file seals them".into(),
        (None, Some(_)) => "tokens in plain rows; [state] key_file seals them".into(),
    };
    let place = match database {
        Some(db) => format!("PostgreSQL {db}"),
        None => dir.display().to_string(),
    };
    format!("state:  {place} ({sealing})")
}

/// With a state key: names the accounts whose grants are still stored unsealed.
async fn warn_unsealed(ctx: &Ctx, config: &crate::config::Config) -> Result<()> {
    let store = ctx.store()?;
    let mut plain: Vec<&str> = Vec::new();
    for name in config.accounts.keys() {
        if matches!(store.is_sealed(name).await, Ok(Some(false))) {
            plain.push(name);
        }
    }
    if !plain.is_empty() {
        ctx.out.warn(&format!(
            "the grants of {} are still stored unsealed (they are sealed at their next refresh); to seal them now: mailpilot state rotate-key {}",
            plain.join(", "),
            config
                .state
                .key_file
                .as_deref()
                .map_or("KEY_FILE".into(), |p| p.display().to_string())
        ));
    }
    Ok(())
}

fn account_json(a: &Account) -> AccountJson {
    let server = |s: &Option<Server>| {
        s.as_ref().map(|s| ServerJson {
            host: s.host.clone(),
            port: s.port,
            tls: s.tls.name(),
            mechanism: s.mechanism.name(),
            ca_file: s.ca_file.as_ref().map(|p| p.display().to_string()),
        })
    };
    AccountJson {
        name: a.name.clone(),
        provider: a.provider.name(),
        grant: a.grant.name(),
        tenant: match &a.provider {
            crate::config::Provider::Microsoft { tenant, .. } => Some(tenant.clone()),
            _ => None,
        },
        cloud: match &a.provider {
            crate::config::Provider::Microsoft { cloud, .. } => Some(cloud.name()),
            _ => None,
        },
        email: a.email.clone(),
        sign_in_as: a.sign_in_as.clone(),
        from: a.from.clone(),
        client_id: a.client_id.clone(),
        client_secret: a
            .client_secret
            .as_ref()
            .map_or("none (public client)".into(), |s| s.describe()),
        client_auth: a.client_auth.name(),
        scopes: a.scopes.clone(),
        auth_url: a.endpoints.auth_url.clone(),
        issuer: a.endpoints.issuer.clone(),
        token_url: a.endpoints.token_url.clone(),
        auth_params: a.auth_params.iter().cloned().collect(),
        redirect_uri: a.redirect_uri.as_ref().map(ToString::to_string),
        proxy: a.proxy.as_ref().map(ToString::to_string),
        ca_file: a.ca_file.as_ref().map(|p| p.display().to_string()),
        device_url: a.endpoints.device_url.clone(),
        revoke_url: a.endpoints.revoke_url.clone(),
        refresh_margin_secs: a.refresh_margin.as_secs(),
        token_timeout_secs: a.token_timeout.as_secs(),
        max_message_size: a.max_message_size,
        smtp: server(&a.smtp),
        imap: server(&a.imap),
    }
}

/// The authorization server, login and network lines of an account.
fn endpoint_lines(a: &AccountJson) -> Vec<String> {
    let field = |name: &str, value: &str| format!("  {:<15} {value}", format!("{name}:"));
    let mut lines = Vec::new();
    if let Some(issuer) = &a.issuer {
        lines.push(field("issuer", issuer));
    }
    let discovered = if a.issuer.is_some() {
        "(from the issuer's metadata)"
    } else {
        "(none)"
    };
    lines.push(field(
        "token_url",
        a.token_url.as_deref().unwrap_or(discovered),
    ));
    for (name, url) in [
        ("auth_url", &a.auth_url),
        ("device_url", &a.device_url),
        ("revoke_url", &a.revoke_url),
        ("redirect_uri", &a.redirect_uri),
    ] {
        match url {
            Some(url) => lines.push(field(name, url)),
            None if a.issuer.is_some() && name != "redirect_uri" => {
                lines.push(field(name, discovered));
            }
            None => {}
        }
    }
    lines.push(field(
        "proxy",
        a.proxy
            .as_deref()
            .unwrap_or("(none: direct; HTTPS_PROXY honoured for the OAuth endpoints)"),
    ));
    if let Some(ca) = &a.ca_file {
        lines.push(field("ca_file", ca));
    }
    if !a.auth_params.is_empty() {
        let params: Vec<String> = a
            .auth_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(field("auth_params", &params.join(" ")));
    }
    lines
}

fn human(a: &AccountJson) -> Vec<String> {
    let field = |name: &str, value: &str| format!("  {:<15} {value}", format!("{name}:"));
    let provider = match (&a.tenant, a.cloud) {
        (Some(t), Some(cloud)) if cloud != Cloud::Global.name() => {
            format!("{} (tenant {t}, cloud {cloud})", a.provider)
        }
        (Some(t), _) => format!("{} (tenant {t})", a.provider),
        (None, _) => a.provider.to_string(),
    };
    let mut lines = vec![
        format!("[accounts.{}]", a.name),
        field("provider", &provider),
        field("grant", a.grant),
        field("email", &a.email),
        field("sign_in_as", a.sign_in_as.as_deref().unwrap_or("(email)")),
        field("from", a.from.as_deref().unwrap_or("(email)")),
        field("client_id", &a.client_id),
        field("client_secret", &a.client_secret),
        field("client_auth", a.client_auth),
        field("scopes", &a.scopes.join(" ")),
    ];
    lines.extend(endpoint_lines(a));
    lines.push(field(
        "refresh_margin",
        &format!("{}s", a.refresh_margin_secs),
    ));

    lines.push(field(
        "token_timeout",
        &format!("{}s", a.token_timeout_secs),
    ));
    lines.push(field(
        "max_message_size",
        &format!("{} bytes", a.max_message_size),
    ));
    for (protocol, server) in [(Protocol::Smtp, &a.smtp), (Protocol::Imap, &a.imap)] {
        if let Some(s) = server {
            let ca = s
                .ca_file
                .as_ref()
                .map_or(String::new(), |c| format!(", ca_file {c}"));
            lines.push(field(
                protocol.name(),
                &format!(
                    "{}:{} tls={} mechanism={}{ca}",
                    s.host, s.port, s.tls, s.mechanism
                ),
            ));
        }
    }
    lines
}

//! `mailpilot config check`: validate and show the resolved configuration.

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::config::{Account, Protocol, Server, Spelled};
use crate::exit::Exit;
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
    accounts: Vec<AccountJson>,
    sendmail: SendmailJson,
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
    email: String,
    sign_in_as: Option<String>,
    from: Option<String>,
    client_id: String,
    client_secret: String,
    client_auth: &'static str,
    scopes: Vec<String>,
    auth_url: Option<String>,
    token_url: String,
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
    pub fn run(self, ctx: &Ctx) -> Result<Exit> {
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
        if ctx.out.is_json() {
            ctx.out.json(&ConfigJson {
                version: JSON_SCHEMA_VERSION,
                config: config.path.display().to_string(),
                state_dir: state_dir.display().to_string(),
                accounts,
                sendmail,
            })?;
            return Ok(Exit::Success);
        }
        ctx.out
            .data(&format!("config: {}", config.path.display()))?;
        ctx.out.data(&format!("state:  {}", state_dir.display()))?;
        for a in &accounts {
            ctx.out.data("")?;
            for line in human(a) {
                ctx.out.data(&line)?;
            }
        }
        ctx.out.data("")?;
        let aliases: Vec<String> = sendmail
            .aliases
            .iter()
            .map(|(k, v)| format!("{k} → {v}"))
            .collect();
        ctx.out.data(&format!(
            "sendmail: account {}, aliases [{}], rewrite_from {}, max_age {}, warn_after {}",
            sendmail
                .account
                .as_deref()
                .unwrap_or("(none: set [sendmail] account)"),
            aliases.join(", "),
            sendmail.rewrite_from,
            humantime::format_duration(config.sendmail.max_age),
            humantime::format_duration(config.sendmail.warn_after)
        ))?;
        ctx.out.info(&format!(
            "configuration OK ({} account{})",
            accounts.len(),
            if accounts.len() == 1 { "" } else { "s" }
        ));
        Ok(Exit::Success)
    }
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
            crate::config::Provider::Microsoft { tenant } => Some(tenant.clone()),
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
        token_url: a.endpoints.token_url.clone(),
        device_url: a.endpoints.device_url.clone(),
        revoke_url: a.endpoints.revoke_url.clone(),
        refresh_margin_secs: a.refresh_margin.as_secs(),
        token_timeout_secs: a.token_timeout.as_secs(),
        max_message_size: a.max_message_size,
        smtp: server(&a.smtp),
        imap: server(&a.imap),
    }
}

fn human(a: &AccountJson) -> Vec<String> {
    let field = |name: &str, value: &str| format!("  {:<15} {value}", format!("{name}:"));
    let provider = match &a.tenant {
        Some(t) => format!("{} (tenant {t})", a.provider),
        None => a.provider.to_string(),
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
        field("token_url", &a.token_url),
    ];
    for (name, url) in [
        ("auth_url", &a.auth_url),
        ("device_url", &a.device_url),
        ("revoke_url", &a.revoke_url),
    ] {
        if let Some(url) = url {
            lines.push(field(name, url));
        }
    }
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

//! From text to [`Config`]: syntax, unknown keys, types, then meaning — collecting every problem.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{field_names, RawAccount, RawServer};
use super::{
    Account, ClientAuth, Config, Endpoints, Job, Mechanism, Problem, Provider, Schedule,
    SecretSource, Server, ServerPreset, Tls, PROVIDER_NAMES,
};

/// Top-level keys; later features add theirs here.
const ROOT_KEYS: &[&str] = &["accounts", "templates_dir", "jobs"];

/// Default for `refresh_margin`: refresh a token with less than 5 minutes left, so a command that
/// starts with it still has minutes of validity for its SMTP/IMAP login.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Largest `refresh_margin`: Google tokens live 3599 s, so a margin near an hour would refresh on
/// every call.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);
/// Default for `token_timeout`: generous for a slow link, short enough for cron.
const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `token_timeout`.
const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(300);

/// Collects problems with their key paths.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Parses and validates `text` read from `path`.
pub(super) fn parse(text: &str, path: &Path, world_readable: bool) -> Result<Config, Vec<Problem>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| vec![syntax_problem(text, &e)])?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut problems = Problems::default();
    for key in table.keys().filter(|k| !ROOT_KEYS.contains(&k.as_str())) {
        problems.push(key.clone(), unknown_key_message(key, ROOT_KEYS));
    }
    let mut accounts = BTreeMap::new();
    match table.get("accounts") {
        None => problems.push(
            "accounts",
            "no accounts defined (add an [accounts.NAME] table)",
        ),
        Some(toml::Value::Table(raw_accounts)) => {
            for (name, value) in raw_accounts {
                let at = format!("accounts.{name}");
                let ctx = AccountCtx {
                    at: &at,
                    name,
                    dir: &dir,
                    world_readable,
                };
                if let Some(account) = account(value.clone(), &ctx, &mut problems) {
                    accounts.insert(name.clone(), account);
                }
            }
        }
        Some(other) => problems.push(
            "accounts",
            format!("expected a table of accounts, found {}", other.type_str()),
        ),
    }
    let templates_dir = match table.get("templates_dir") {
        None => dir.join("templates"),
        Some(toml::Value::String(d)) => dir.join(d),
        Some(other) => {
            problems.push(
                "templates_dir",
                format!("expected a directory path, found {}", other.type_str()),
            );
            dir.join("templates")
        }
    };
    let mut jobs = BTreeMap::new();
    match table.get("jobs") {
        None => {}
        Some(toml::Value::Table(raw_jobs)) => {
            for (name, value) in raw_jobs {
                if let Some(job) = job(name, value, &accounts, &mut problems) {
                    jobs.insert(name.clone(), job);
                }
            }
        }
        Some(other) => problems.push(
            "jobs",
            format!("expected a table of jobs, found {}", other.type_str()),
        ),
    }
    if problems.0.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            accounts,
            templates_dir,
            jobs,
        })
    } else {
        Err(problems.0)
    }
}

/// Keys of a job table that are not command-line options.
const JOB_KEYS: &[&str] = &["kind", "schedule", "every", "timeout", "on_failure"];

/// `[jobs.NAME]` → [`Job`]: the scheduling keys are checked here; every other key becomes the
/// command-line option of the same long name (checked by the command's own parser later).
fn job(
    name: &str,
    value: &toml::Value,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> Option<Job> {
    let at = format!("jobs.{name}");
    let Some(table) = value.as_table() else {
        problems.push(&at, "expected a table");
        return None;
    };
    if !valid_account_name(name) {
        problems.push(
            &at,
            "job names may use letters, digits, '.', '_' and '-'; the name is used in file names",
        );
    }
    let before = problems.0.len();
    let kind = match table.get("kind").and_then(|k| k.as_str()) {
        Some(k @ ("send" | "poll")) => k.to_string(),
        Some(other) => {
            problems.push(
                format!("{at}.kind"),
                choice_message(other, &["send", "poll"]),
            );
            String::new()
        }
        None => {
            problems.push(
                format!("{at}.kind"),
                "missing (required): \"send\" or \"poll\"",
            );
            String::new()
        }
    };
    let text = |key: &str, problems: &mut Problems| match table.get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(
                format!("{at}.{key}"),
                format!("expected a string, found {}", other.type_str()),
            );
            None
        }
    };
    let schedule = match (text("schedule", problems), text("every", problems)) {
        (Some(_), Some(_)) => {
            problems.push(&at, "give either schedule or every, not both");
            None
        }
        (Some(cron), None) => match cron.parse::<croner::Cron>() {
            Ok(_) => Some(Schedule::Cron(cron)),
            Err(e) => {
                problems.push(format!("{at}.schedule"), format!("\"{cron}\" is not a cron expression ({e}); e.g. \"0 6 * * *\" or \"*/15 * * * *\""));
                None
            }
        },
        (None, Some(every)) => match humantime::parse_duration(&every) {
            Ok(d) if d >= Duration::from_secs(1) => Some(Schedule::Every(d)),
            _ => {
                problems.push(
                    format!("{at}.every"),
                    format!("\"{every}\" is not an interval of at least 1s (e.g. \"15m\")"),
                );
                None
            }
        },
        (None, None) => None,
    };
    let timeout = text("timeout", problems).and_then(|t| match humantime::parse_duration(&t) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        _ => {
            problems.push(
                format!("{at}.timeout"),
                format!("\"{t}\" is not a duration of at least 1s"),
            );
            None
        }
    });
    let on_failure = text("on_failure", problems);
    if let Some(toml::Value::String(account)) = table.get("account") {
        if !accounts.contains_key(account) {
            problems.push(
                format!("{at}.account"),
                format!("no account named \"{account}\""),
            );
        }
    }
    let mut args = Vec::new();
    for (key, value) in table
        .iter()
        .filter(|(k, _)| !JOB_KEYS.contains(&k.as_str()))
    {
        if let Err(message) = push_option(&mut args, key, value) {
            problems.push(format!("{at}.{key}"), message);
        }
    }
    if problems.0.len() > before {
        return None;
    }
    Some(Job {
        name: name.to_string(),
        kind,
        args,
        schedule,
        timeout,
        on_failure,
    })
}

/// Appends `--key value` for a job table entry: strings and numbers once, arrays repeated,
/// `true` as a bare flag, `var = { k = "v" }` as `--var k=v`.
fn push_option(args: &mut Vec<String>, key: &str, value: &toml::Value) -> Result<(), String> {
    let flag = format!("--{}", key.replace('_', "-"));
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or number, found {}",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Boolean(true) => args.push(flag),
        toml::Value::Boolean(false) => {}
        toml::Value::Array(items) => {
            for item in items {
                args.push(flag.clone());
                args.push(scalar(item)?);
            }
        }
        toml::Value::Table(t) if key == "var" => {
            for (k, v) in t {
                args.push(flag.clone());
                args.push(format!("{k}={}", scalar(v)?));
            }
        }
        other => {
            args.push(flag);
            args.push(scalar(other)?);
        }
    }
    Ok(())
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let path = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}")
        }
        None => "syntax".into(),
    };
    Problem {
        path,
        message: e.message().to_string(),
    }
}

/// Deserializes `value` as `T`, reporting unknown keys (with suggestions) and type errors with their
/// full key paths. `known` gives the field names of the table at a relative path.
fn deserialize_collecting<T: for<'de> Deserialize<'de>>(
    value: toml::Value,
    at: &str,
    known: impl Fn(&str) -> &'static [&'static str],
    problems: &mut Problems,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut record = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let ignored = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    for rel in unknown {
        // serde_ignored marks `Option` layers as `?`; they are not part of the key path.
        let rel = rel.replace("?.", "");
        let (parent, key) = rel.rsplit_once('.').unwrap_or(("", rel.as_str()));
        problems.push(
            format!("{at}.{rel}"),
            unknown_key_message(key, known(parent)),
        );
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." {
                at.to_string()
            } else {
                format!("{at}.{inner}")
            };
            // toml appends "in `key`" on later lines; the path is already in front.
            let message = e.into_inner().to_string();
            problems.push(path, message.lines().next().unwrap_or_default());
            None
        }
    }
}

fn unknown_key_message(key: &str, known: &[&str]) -> String {
    match suggest(key, known) {
        Some(s) => format!("unknown key (did you mean `{s}`?)"),
        None if known.is_empty() => "unknown key".into(),
        None => format!("unknown key (expected one of: {})", known.join(", ")),
    }
}

/// The closest candidate within a small edit distance, for "did you mean".
pub(super) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit ("hots" → "host" is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

struct AccountCtx<'a> {
    at: &'a str,
    name: &'a str,
    dir: &'a Path,
    world_readable: bool,
}

fn account(value: toml::Value, ctx: &AccountCtx<'_>, problems: &mut Problems) -> Option<Account> {
    let at = ctx.at;
    if !valid_account_name(ctx.name) {
        problems.push(
            at,
            "account names may use letters, digits, '.', '_' and '-' (and start with a letter or digit); the name is used in file names",
        );
    }
    let known = |parent: &str| match parent {
        "smtp" | "imap" => field_names::<RawServer>(),
        _ => field_names::<RawAccount>(),
    };
    let raw: RawAccount = deserialize_collecting(value, at, known, problems)?;
    let before = problems.0.len();

    let provider = provider(&raw, at, problems);
    let email = required(raw.email.clone(), &format!("{at}.email"), problems);
    if let Some(email) = &email {
        if !valid_email(email) {
            problems.push(
                format!("{at}.email"),
                format!("\"{email}\" is not an email address"),
            );
        }
    }
    let client_id = required(raw.client_id.clone(), &format!("{at}.client_id"), problems);
    let client_secret = secret_source(&raw, ctx, problems);
    let client_auth = match raw.client_auth.as_deref() {
        None => provider.as_ref().map(Provider::client_auth),
        Some("body") => Some(ClientAuth::Body),
        Some("basic") => Some(ClientAuth::Basic),
        Some(other) => {
            problems.push(
                format!("{at}.client_auth"),
                choice_message(other, &["body", "basic"]),
            );
            None
        }
    };
    let scopes = scopes(&raw, provider.as_ref(), at, problems);
    let endpoints = provider
        .as_ref()
        .and_then(|p| endpoints(&raw, p, at, problems));
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
    let (smtp, imap) = match &provider {
        Some(p) => (
            server(
                raw.smtp.as_ref(),
                p.smtp(),
                p,
                &format!("{at}.smtp"),
                ctx.dir,
                problems,
            ),
            server(
                raw.imap.as_ref(),
                p.imap(),
                p,
                &format!("{at}.imap"),
                ctx.dir,
                problems,
            ),
        ),
        None => (None, None),
    };
    if problems.0.len() > before {
        return None;
    }
    let provider = provider?;
    Some(Account {
        name: ctx.name.to_string(),
        scope_on_refresh: provider.scope_on_refresh(),
        provider,
        email: email?,
        client_id: client_id?,
        client_secret,
        client_auth: client_auth?,
        scopes: scopes?,
        endpoints: endpoints?,
        refresh_margin,
        token_timeout,
        smtp,
        imap,
    })
}

fn valid_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= 64
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

fn required(value: Option<String>, path: &str, problems: &mut Problems) -> Option<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Some(v),
        Some(_) => {
            problems.push(path, "must not be empty");
            None
        }
        None => {
            problems.push(path, "missing (required)");
            None
        }
    }
}

fn choice_message(got: &str, choices: &[&str]) -> String {
    let expected = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    match suggest(got, choices) {
        Some(s) => {
            format!("unknown value \"{got}\" (expected one of {expected}; did you mean \"{s}\"?)")
        }
        None => format!("unknown value \"{got}\" (expected one of {expected})"),
    }
}

fn provider(raw: &RawAccount, at: &str, problems: &mut Problems) -> Option<Provider> {
    let path = format!("{at}.provider");
    let provider = match raw.provider.as_deref() {
        None => {
            problems.push(
                path,
                "missing (required): one of \"google\", \"microsoft\", \"custom\"",
            );
            return None;
        }
        Some("google") => Provider::Google,
        Some("custom") => Provider::Custom,
        Some("microsoft") => {
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
            return Some(Provider::Microsoft { tenant });
        }
        Some(other) => {
            problems.push(path, choice_message(other, PROVIDER_NAMES));
            return None;
        }
    };
    if raw.tenant.is_some() {
        problems.push(
            format!("{at}.tenant"),
            "only used with provider = \"microsoft\"",
        );
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
    at: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let path = format!("{at}.scopes");
    let scopes = match (&raw.scopes, provider) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => p.scopes(),
        (None, None) => return None,
    };
    if scopes
        .iter()
        .any(|s| s.trim().is_empty() || s.contains(' '))
    {
        problems.push(&path, "give one scope per string, without spaces");
    }
    if let Some(Provider::Microsoft { .. }) = provider {
        if let Some(bad) = scopes.iter().find(|s| s.contains("outlook.office365.com")) {
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

fn endpoints(
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
    if raw.device_url.is_some() && *provider == Provider::Google {
        problems.push(
            format!("{at}.device_url"),
            "Google does not allow Gmail scopes in the device flow; use `mailpilot auth login` (browser) or `--paste`",
        );
    }
    if token_url.is_none() && raw.token_url.is_none() {
        problems.push(
            format!("{at}.token_url"),
            "missing (required for provider = \"custom\")",
        );
    }
    Some(Endpoints {
        auth_url,
        token_url: token_url?,
        device_url,
        revoke_url,
    })
}

/// `https://`, or `http://` to a loopback host (test servers).
fn check_url(value: &str) -> Result<(), String> {
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

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn duration(
    value: Option<&str>,
    default: Duration,
    (min, max): (Duration, Duration),
    path: &str,
    problems: &mut Problems,
) -> Duration {
    let Some(text) = value else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if d >= min && d <= max => d,
        Ok(_) => {
            problems.push(
                path,
                format!(
                    "\"{text}\" is out of range ({} to {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            default
        }
        Err(_) => {
            problems.push(
                path,
                format!("\"{text}\" is not a duration (write e.g. \"90s\", \"5m\", \"1h\")"),
            );
            default
        }
    }
}

fn server(
    raw: Option<&RawServer>,
    preset: Option<ServerPreset>,
    provider: &Provider,
    path: &str,
    dir: &Path,
    problems: &mut Problems,
) -> Option<Server> {
    if raw.is_none() && preset.is_none() {
        return None;
    }
    let empty = RawServer::default();
    let raw = raw.unwrap_or(&empty);
    let tls = match raw.tls.as_deref() {
        None => preset.map_or(Tls::Implicit, |p| p.tls),
        Some("implicit") => Tls::Implicit,
        Some("starttls") => Tls::Starttls,
        Some("none") => Tls::None,
        Some(other) => {
            problems.push(
                format!("{path}.tls"),
                choice_message(other, &["implicit", "starttls", "none"]),
            );
            Tls::Implicit
        }
    };
    let host = match (&raw.host, preset) {
        (Some(h), _) if h.trim().is_empty() || h.contains(char::is_whitespace) => {
            problems.push(
                format!("{path}.host"),
                format!("\"{h}\" is not a host name"),
            );
            None
        }
        (Some(h), _) => Some(h.clone()),
        (None, Some(p)) => Some(p.host.to_string()),
        (None, None) => {
            problems.push(
                format!("{path}.host"),
                "missing (required for provider = \"custom\")",
            );
            None
        }
    };
    let port = match raw.port {
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.push(
                    format!("{path}.port"),
                    format!("{p} is not a port (expected 1..=65535)"),
                );
                None
            }
        },
        None => Some(default_port(path.ends_with(".smtp"), tls, preset)),
    };
    let mechanism = match raw.mechanism.as_deref() {
        None | Some("xoauth2") => Mechanism::Xoauth2,
        Some("oauthbearer") => Mechanism::Oauthbearer,
        Some(other) => {
            problems.push(
                format!("{path}.mechanism"),
                choice_message(other, &["xoauth2", "oauthbearer"]),
            );
            Mechanism::Xoauth2
        }
    };
    if !provider.accepts(mechanism) {
        problems.push(
            format!("{path}.mechanism"),
            format!("{} servers accept only \"xoauth2\"", provider.name()),
        );
    }
    if let (Tls::None, Some(h)) = (tls, &host) {
        if !is_loopback(h) {
            problems.push(
                format!("{path}.tls"),
                format!("\"none\" is allowed only to a loopback host (got \"{h}\"): the token would cross the network in clear text"),
            );
        }
    }
    let ca_file = raw.ca_file.as_ref().map(|f| dir.join(f));
    if let Some(f) = &ca_file {
        if !f.is_file() {
            problems.push(
                format!("{path}.ca_file"),
                format!("{} is not a readable file", f.display()),
            );
        }
    }
    Some(Server {
        host: host?,
        port: port?,
        tls,
        ca_file,
        mechanism,
    })
}

/// The port when the config gives none: the preset's if the TLS mode matches it, else the
/// standard port of the TLS mode.
fn default_port(smtp: bool, tls: Tls, preset: Option<ServerPreset>) -> u16 {
    match (preset, smtp, tls) {
        (Some(p), _, _) if p.tls == tls => p.port,
        (_, true, Tls::Implicit) => 465,
        (_, true, _) => 587,
        (_, false, Tls::Implicit) => 993,
        (_, false, _) => 143,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text, Path::new("/etc/mp/config.toml"), false)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

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
        assert_eq!(a.endpoints.token_url, "https://oauth2.googleapis.com/token");
        let smtp = a.smtp.as_ref().expect("smtp");
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("smtp.gmail.com", 465, Tls::Implicit)
        );
        assert_eq!(a.refresh_margin, DEFAULT_REFRESH_MARGIN);
        assert!(!a.scope_on_refresh);
    }

    /// Unknown keys at every level are all reported, with suggestions.
    #[test]
    fn unknown_keys_everywhere() {
        let p = problems(
            r#"
            acounts = 1
            [accounts.work]
            providr = "google"
            provider = "google"
            email = "ops@example.com"
            client_id = "id"
            [accounts.work.smtp]
            hots = "x"
            "#,
        );
        assert_eq!(
            p,
            [
                "acounts: unknown key (did you mean `accounts`?)",
                "accounts.work.providr: unknown key (did you mean `provider`?)",
                "accounts.work.smtp.hots: unknown key (did you mean `host`?)",
            ]
        );
    }

    /// Several semantic problems in one account are reported together.
    #[test]
    fn collects_all_problems() {
        let p = problems(
            r#"
            [accounts."bad name"]
            provider = "microsoft"
            email = "nobody"
            client_id = ""
            scopes = ["https://outlook.office365.com/SMTP.Send"]
            refresh_margin = "2h"
            [accounts."bad name".imap]
            port = 70000
            mechanism = "oauthbearer"
            [accounts."bad name".smtp]
            host = "mail.example.com"
            tls = "none"
            "#,
        );
        let joined = p.join("\n");
        for want in [
            "accounts.bad name: account names may use",
            "accounts.bad name.email: \"nobody\" is not an email address",
            "accounts.bad name.client_id: must not be empty",
            "accounts.bad name.scopes: \"https://outlook.office365.com/SMTP.Send\" has the wrong host",
            "accounts.bad name.scopes: \"offline_access\" is missing",
            "accounts.bad name.refresh_margin: \"2h\" is out of range (0s to 30m)",
            "accounts.bad name.imap.port: 70000 is not a port (expected 1..=65535)",
            "accounts.bad name.imap.mechanism: microsoft servers accept only \"xoauth2\"",
            "accounts.bad name.smtp.tls: \"none\" is allowed only to a loopback host",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        assert_eq!(p.len(), 9, "{joined}");
    }

    /// Type errors carry the full key path.
    #[test]
    fn type_error_has_path() {
        let p = problems(
            r#"
            [accounts.work]
            provider = "google"
            email = "ops@example.com"
            client_id = "id"
            [accounts.work.smtp]
            port = "587"
            "#,
        );
        assert_eq!(
            p,
            ["accounts.work.smtp.port: invalid type: string \"587\", expected i64"]
        );
    }

    /// Syntax errors name line and column.
    #[test]
    fn syntax_error_has_line() {
        let p = problems("[accounts.work]\nprovider = \"google\nemail = 1\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("line 2, column "), "{p:?}");
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
            "accounts.a.token_url: missing (required for provider = \"custom\")"
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

    /// "Did you mean" only for near misses.
    #[test]
    fn suggestions() {
        assert_eq!(suggest("hots", &["host", "port"]), Some("host"));
        assert_eq!(suggest("zzzzzz", &["host", "port"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}

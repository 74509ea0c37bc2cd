//! From text to [`Config`]: syntax, unknown keys, types, then meaning — collecting every problem.
//!
//! - this file: the whole file's pass (root keys, syntax), the shared helpers (the collecting
//!   serde pass, durations, required values, words);
//! - `account`: `[accounts.NAME]` (provider, secrets, scopes);
//! - `endpoints`: the account's authorization server (endpoints, issuer, login parameters);
//! - `server`: `[accounts.NAME.smtp]` / `.imap`;
//! - `job`: job tables (`jobs.NAME`);
//! - `sendmail`: the `[sendmail]` table;
//! - `relay`: the `[relay]` table and its users;
//! - `suggest`: "did you mean" for unknown keys and values.

mod account;
pub(crate) mod endpoints;
mod job;
mod relay;
mod sendmail;
mod server;
mod suggest;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, Problem, SecretSource, Spelled};
use suggest::{choice_message, unknown_key_message};

/// Top-level keys; later features add theirs here.
const ROOT_KEYS: &[&str] = &[
    "accounts",
    "templates_dir",
    "proxy",
    "jobs",
    "sendmail",
    "relay",
    "state",
];

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

    /// How many were found so far (to tell whether a part added any).
    fn count(&self) -> usize {
        self.0.len()
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
    let proxy = match table.get("proxy") {
        None => None,
        Some(toml::Value::String(text)) => {
            account::proxy(text, "proxy", world_readable, &mut problems)
        }
        Some(other) => {
            problems.push(
                "proxy",
                format!("expected a proxy URL, found {}", other.type_str()),
            );
            None
        }
    };
    let mut accounts = BTreeMap::new();
    match table.get("accounts") {
        None => problems.push(
            "accounts",
            "no accounts defined (add an [accounts.NAME] table)",
        ),
        Some(toml::Value::Table(raw_accounts)) => {
            for (name, value) in raw_accounts {
                let ctx = account::AccountCtx {
                    at: &format!("accounts.{name}"),
                    name,
                    dir: &dir,
                    world_readable,
                    proxy: proxy.as_ref(),
                };
                if let Some(account) = account::account(value.clone(), &ctx, &mut problems) {
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
    let jobs = job::jobs(table.get("jobs"), &accounts, &mut problems);
    let sendmail = sendmail::sendmail(table.get("sendmail"), &accounts, &mut problems);
    let relay = relay::relay(table.get("relay"), &accounts, &mut problems);
    let state = state(table.get("state"), &dir, &mut problems);
    if problems.0.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            accounts,
            templates_dir,
            jobs,
            sendmail,
            relay,
            state,
        })
    } else {
        Err(problems.0)
    }
}

/// `[state]`: the key file, relative to the config file's directory.
fn state(value: Option<&toml::Value>, dir: &Path, problems: &mut Problems) -> super::State {
    let Some(value) = value else {
        return super::State::default();
    };
    let known = |_: &str| super::raw::field_names::<super::raw::RawState>();
    let raw: Option<super::raw::RawState> =
        deserialize_collecting(value.clone(), "state", known, problems);
    let Some(raw) = raw else {
        return super::State::default();
    };
    let backend = match raw.backend.as_deref() {
        None | Some("files") => {
            let extra = [
                ("url", raw.url.is_some()),
                ("password_env", raw.password_env.is_some()),
                ("password_file", raw.password_file.is_some()),
                ("password_cmd", raw.password_cmd.is_some()),
                ("schema", raw.schema.is_some()),
                ("ca_file", raw.ca_file.is_some()),
            ];
            for (key, _) in extra.iter().filter(|(_, set)| *set) {
                problems.push(
                    format!("state.{key}"),
                    "only used with backend = \"postgres\"",
                );
            }
            super::Backend::Files
        }
        Some("postgres") => {
            postgres(&raw, dir, problems).map_or(super::Backend::Files, super::Backend::Postgres)
        }
        Some(other) => {
            problems.push(
                "state.backend",
                format!("unknown backend \"{other}\": expected \"files\" or \"postgres\""),
            );
            super::Backend::Files
        }
    };
    super::State {
        key_file: raw.key_file.map(|f| dir.join(f)),
        backend,
    }
}

/// `[state] backend = "postgres"`: the URL must parse and hold no password (it would sit in the
/// config in clear and show in `ps`-like places); the schema must be a plain identifier, since it
/// is spelled into SQL.
fn postgres(
    raw: &super::raw::RawState,
    dir: &Path,
    problems: &mut Problems,
) -> Option<super::Postgres> {
    let Some(url) = raw.url.clone() else {
        problems.push(
            "state.url",
            "backend = \"postgres\" needs url = \"postgresql://USER@HOST:PORT/DATABASE\"",
        );
        return None;
    };
    match url.parse::<tokio_postgres::Config>() {
        Ok(parsed) if parsed.get_password().is_some() => problems.push(
            "state.url",
            "the URL holds a password: remove it and use password_env, password_file or password_cmd",
        ),
        Ok(parsed) if parsed.get_hosts().is_empty() => {
            problems.push("state.url", "the URL names no host")
        }
        Ok(_) => {}
        Err(e) => problems.push("state.url", format!("not a PostgreSQL URL: {e}")),
    }
    let mut sources = Vec::new();
    if let Some(var) = &raw.password_env {
        sources.push(SecretSource::Env(var.clone()));
    }
    if let Some(file) = &raw.password_file {
        sources.push(SecretSource::File(dir.join(file)));
    }
    if let Some(cmd) = &raw.password_cmd {
        sources.push(SecretSource::Cmd(cmd.clone()));
    }
    if sources.len() > 1 {
        problems.push(
            "state",
            "give the database password one way: password_env, password_file or password_cmd",
        );
    }
    let schema = raw
        .schema
        .clone()
        .unwrap_or_else(|| super::DEFAULT_SCHEMA.to_string());
    let plain = schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        problems.push(
            "state.schema",
            format!("\"{schema}\" is not a plain identifier: lowercase letters, digits and _, at most 63, not starting with a digit"),
        );
    }
    Some(super::Postgres {
        url,
        password: sources.pop(),
        schema,
        ca_file: raw.ca_file.as_ref().map(|f| dir.join(f)),
    })
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

/// Account and job names: used in file names.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= 64
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

/// The value spelled `got` at `path`, or a problem listing the spellings (with a suggestion).
fn choice<T: Spelled>(got: &str, path: &str, problems: &mut Problems) -> Option<T> {
    let value = T::from_name(got);
    if value.is_none() {
        problems.push(path, choice_message(got, &T::names()));
    }
    value
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The problems `text` has, as printed.
    pub(crate) fn problems(text: &str) -> Vec<String> {
        parse(text, Path::new("/etc/mp/config.toml"), false)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
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

    proptest::proptest! {
        /// Any text is a configuration or a list of problems, never a panic; and TOML-shaped
        /// text with arbitrary values too.
        #[test]
        fn any_config_text_is_handled(text in ".*", value in ".*") {
            let _ = parse(&text, Path::new("/c.toml"), false);
            let shaped = format!(
                "[accounts.a]\nprovider = \"custom\"\nemail = {value:?}\nclient_id = {value:?}\ntoken_url = {value:?}\nrefresh_margin = {value:?}\nmax_message_size = {value:?}\n[accounts.a.imap]\nhost = {value:?}\n[jobs.j]\nkind = \"poll\"\nschedule = {value:?}\nflag = {value:?}\n"
            );
            let _ = parse(&shaped, Path::new("/c.toml"), false);
        }
    }
}

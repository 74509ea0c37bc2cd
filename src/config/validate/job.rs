//! `[jobs.NAME]`: the scheduling keys through the serde mirror ([`RawJob`]); every other key
//! becomes the command-line option of the same long name, which the command's own parser checks
//! later (`config check`, daemon start, `run`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::raw::{field_names, RawJob};
use super::super::{Account, Job, JobKind, Schedule, Spelled};
use super::suggest::quoted;
use super::{choice, deserialize_collecting, valid_name, Problems};

/// Every `[jobs.NAME]` table.
pub(super) fn jobs(
    value: Option<&toml::Value>,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> BTreeMap<String, Job> {
    let mut jobs = BTreeMap::new();
    match value {
        None => {}
        Some(toml::Value::Table(raw_jobs)) => {
            for (name, value) in raw_jobs {
                if let Some(job) = job(name, value, accounts, problems) {
                    jobs.insert(name.clone(), job);
                }
            }
        }
        Some(other) => problems.push(
            "jobs",
            format!("expected a table of jobs, found {}", other.type_str()),
        ),
    }
    jobs
}

/// `[jobs.NAME]` → [`Job`], or `None` after recording its problems.
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
    if !valid_name(name) {
        problems.push(
            &at,
            "job names may use letters, digits, '.', '_' and '-'; the name is used in file names",
        );
    }
    let before = problems.count();
    let job_keys = field_names::<RawJob>();
    let (own, options): (toml::Table, toml::Table) = table
        .clone()
        .into_iter()
        .partition(|(k, _)| job_keys.contains(&k.as_str()));
    let raw: RawJob = deserialize_collecting(toml::Value::Table(own), &at, |_| job_keys, problems)?;
    let kind = match raw.kind.as_deref() {
        Some(word) => choice::<JobKind>(word, &format!("{at}.kind"), problems),
        None => {
            problems.push(
                format!("{at}.kind"),
                format!(
                    "missing (required): {}",
                    quoted(&JobKind::names()).replace(", ", " or ")
                ),
            );
            None
        }
    };
    let schedule = schedule(&raw, &at, problems);
    let timeout = raw
        .timeout
        .as_deref()
        .and_then(|t| match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            _ => {
                problems.push(
                    format!("{at}.timeout"),
                    format!("\"{t}\" is not a duration of at least 1s"),
                );
                None
            }
        });
    if let Some(toml::Value::String(account)) = options.get("account") {
        if !accounts.contains_key(account) {
            problems.push(
                format!("{at}.account"),
                format!("no account named \"{account}\""),
            );
        }
    }
    let mut args = Vec::new();
    for (key, value) in &options {
        if let Err(message) = push_option(&mut args, key, value) {
            problems.push(format!("{at}.{key}"), message);
        }
    }
    if problems.count() > before {
        return None;
    }
    Some(Job {
        name: name.to_string(),
        kind: kind?,
        args,
        schedule,
        timeout,
        on_failure: raw.on_failure,
    })
}

/// `schedule` (cron) or `every` (interval), at most one of them.
fn schedule(raw: &RawJob, at: &str, problems: &mut Problems) -> Option<Schedule> {
    match (&raw.schedule, &raw.every) {
        (Some(_), Some(_)) => {
            problems.push(at, "give either schedule or every, not both");
            None
        }
        (Some(cron), None) => match cron.parse::<croner::Cron>() {
            Ok(_) => Some(Schedule::Cron(cron.clone())),
            Err(e) => {
                problems.push(format!("{at}.schedule"), format!("\"{cron}\" is not a cron expression ({e}); e.g. \"0 6 * * *\" or \"*/15 * * * *\""));
                None
            }
        },
        (None, Some(every)) => match humantime::parse_duration(every) {
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
    }
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

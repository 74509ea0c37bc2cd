//! `[sendmail]`: which account local programs' mail goes through, the addresses of local names, and
//! when From is rewritten.

use std::collections::BTreeMap;

use super::super::raw::{field_names, RawSendmail};
use super::super::{Account, RewriteFrom, Sendmail};
use std::time::Duration;

use super::{choice, deserialize_collecting, duration, Problems};

/// The `[sendmail]` table (all defaults when it is absent).
pub(super) fn sendmail(
    value: Option<&toml::Value>,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> Sendmail {
    let Some(value) = value else {
        return Sendmail::default();
    };
    let known = |_: &str| field_names::<RawSendmail>();
    let Some(raw) =
        deserialize_collecting::<RawSendmail>(value.clone(), "sendmail", known, problems)
    else {
        return Sendmail::default();
    };
    if let Some(name) = &raw.account {
        if !accounts.contains_key(name) {
            let names: Vec<&str> = accounts.keys().map(String::as_str).collect();
            problems.push(
                "sendmail.account",
                format!(
                    "no account named \"{name}\" (accounts: {})",
                    names.join(", ")
                ),
            );
        }
    }
    let aliases = raw.aliases.unwrap_or_default();
    for (name, address) in &aliases {
        let (local, domain) = address.rsplit_once('@').unwrap_or(("", ""));
        if local.is_empty() || !domain.contains('.') || address.chars().any(char::is_whitespace) {
            problems.push(
                format!("sendmail.aliases.{name}"),
                format!("\"{address}\" is not a mail address (user@example.com)"),
            );
        }
    }
    let rewrite_from = match raw.rewrite_from.as_deref() {
        None => RewriteFrom::default(),
        Some(word) => choice(word, "sendmail.rewrite_from", problems).unwrap_or_default(),
    };
    let defaults = Sendmail::default();
    let max_age = duration(
        raw.max_age.as_deref(),
        defaults.max_age,
        (Duration::from_secs(60), Duration::from_secs(30 * 86_400)),
        "sendmail.max_age",
        problems,
    );
    let warn_after = duration(
        raw.warn_after.as_deref(),
        defaults.warn_after,
        (Duration::from_secs(60), Duration::from_secs(30 * 86_400)),
        "sendmail.warn_after",
        problems,
    );
    if let Some(dir) = raw.drop_dir.as_ref().filter(|d| !d.is_absolute()) {
        problems.push(
            "sendmail.drop_dir",
            format!(
                "\"{}\" must be an absolute path (every user's sendmail reads it)",
                dir.display()
            ),
        );
    }
    Sendmail {
        account: raw.account,
        aliases,
        rewrite_from,
        max_age,
        warn_after,
        drop_dir: raw.drop_dir,
    }
}

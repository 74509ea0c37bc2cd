//! `[relay]` and `[relay.users.NAME]`: listeners, limits, and who may send through the relay.
//!
//! The rules that keep it from being an open relay are checked here, once: someone must be able to
//! send (a user, or loopback clients when allowed), and a listener off loopback needs TLS so that
//! no password crosses the network in the clear.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::super::raw::{field_names, RawRelay, RawRelayUser};
use super::super::{Account, FromPatterns, Relay, RelayUser};
use super::account::{message_size, SizeRule};
use super::{deserialize_collecting, duration, Problems};
use crate::secret::Secret;

/// The default plain listener: loopback only, the usual submission-relay port.
const DEFAULT_LISTEN: &str = "127.0.0.1:2525";
/// Default `max_message_size`: Microsoft 365's default send limit (Gmail's is 25 MB of
/// attachments, ~35 MB encoded).
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 35_000_000;
/// `max_message_size`: at most what the outbox takes, less room for added header lines.
const RELAY_SIZE: SizeRule = SizeRule {
    default: DEFAULT_MAX_MESSAGE_SIZE,
    max: 64_000_000,
    max_text: "64MB",
};
/// Default `max_recipients` (Gmail's and Microsoft's per-message limits are 100 and 500).
const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// Default `max_connections`: far above what printers and apps open, far below the fd limit.
const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for the next command.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest one command line or one DATA may take: 35 MB at ~60 KB/s.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// The `[relay]` table (`None` when absent: no relay).
pub(super) fn relay(
    value: Option<&toml::Value>,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> Option<Relay> {
    let value = value?;
    let known = |parent: &str| {
        if parent.starts_with("users") {
            field_names::<RawRelayUser>()
        } else {
            field_names::<RawRelay>()
        }
    };
    let raw = deserialize_collecting::<RawRelay>(value.clone(), "relay", known, problems)?;
    let listen = addresses(raw.listen.as_deref(), "relay.listen", problems)
        .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("a socket address")]);
    let listen_tls =
        addresses(raw.listen_tls.as_deref(), "relay.listen_tls", problems).unwrap_or_default();
    let tls = match (raw.tls_cert_file, raw.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            problems.push(
                "relay.tls_key_file",
                "tls_cert_file and tls_key_file go together (set both, or neither)",
            );
            None
        }
    };
    listeners_need_tls(&listen, &listen_tls, tls.is_some(), problems);
    let users = users(raw.users.unwrap_or_default(), accounts, problems);
    let anonymous = anonymous(
        raw.allow_loopback_without_auth == Some(true),
        RawRelayUser {
            password_hash: None,
            account: raw.account,
            allowed_from: raw.allowed_from,
        },
        accounts,
        problems,
    );
    if users.is_empty() && anonymous.is_none() && problems.count() == 0 {
        problems.push(
            "relay.users",
            "nobody may send through the relay: add a user (`mailpilot relay passwd NAME` prints its [relay.users.NAME] table), or allow_loopback_without_auth = true",
        );
    }
    let limits = limits(
        &raw.max_message_size,
        raw.max_recipients,
        raw.max_connections,
        problems,
    );
    Some(Relay {
        listen,
        listen_tls,
        tls,
        hostname: raw.hostname.filter(|h| hostname_ok(h, problems)),
        max_message_size: limits.0,
        max_recipients: limits.1,
        max_connections: limits.2,
        idle_timeout: duration(
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
            (Duration::from_secs(1), Duration::from_secs(3600)),
            "relay.idle_timeout",
            problems,
        ),
        command_timeout: duration(
            raw.command_timeout.as_deref(),
            DEFAULT_COMMAND_TIMEOUT,
            (Duration::from_secs(1), Duration::from_secs(6 * 3600)),
            "relay.command_timeout",
            problems,
        ),
        anonymous,
        users,
    })
}

/// Who sends from loopback without AUTH (`allow_loopback_without_auth`): the table's own
/// `account` and `allowed_from`, which mean nothing without it.
fn anonymous(
    allowed: bool,
    raw: RawRelayUser,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> Option<RelayUser> {
    if allowed {
        return sender(&raw, "relay", accounts, problems);
    }
    for (key, set) in [
        ("account", raw.account.is_some()),
        ("allowed_from", raw.allowed_from.is_some()),
    ] {
        if set {
            problems.push(
                format!("relay.{key}"),
                "applies to unauthenticated loopback clients only: set allow_loopback_without_auth = true, or move it under [relay.users.NAME]",
            );
        }
    }
    None
}

/// `["127.0.0.1:2525", "[::1]:2525"]` → socket addresses (`None` when the key is absent).
fn addresses(
    raw: Option<&[String]>,
    path: &str,
    problems: &mut Problems,
) -> Option<Vec<SocketAddr>> {
    let raw = raw?;
    let mut out = Vec::new();
    for text in raw {
        match text.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => problems.push(
                path,
                format!(
                    "\"{text}\" is not an IP address and port (\"127.0.0.1:2525\", \"[::]:465\")"
                ),
            ),
        }
    }
    Some(out)
}

/// AUTH only after TLS off loopback: a plain listener there needs a certificate for STARTTLS, and
/// an implicit-TLS listener needs one at all.
fn listeners_need_tls(
    listen: &[SocketAddr],
    listen_tls: &[SocketAddr],
    tls: bool,
    problems: &mut Problems,
) {
    if tls {
        return;
    }
    if let Some(open) = listen.iter().find(|a| !a.ip().is_loopback()) {
        problems.push(
            "relay.listen",
            format!("{open} is not a loopback address: passwords would cross the network in the clear; set tls_cert_file and tls_key_file (AUTH is then offered only after STARTTLS)"),
        );
    }
    if !listen_tls.is_empty() {
        problems.push(
            "relay.listen_tls",
            "implicit TLS needs tls_cert_file and tls_key_file",
        );
    }
}

fn users(
    raw: BTreeMap<String, RawRelayUser>,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> BTreeMap<String, RelayUser> {
    let mut users = BTreeMap::new();
    for (name, user) in raw {
        let at = format!("relay.users.{name}");
        if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == ' ') {
            problems.push(&at, "a user name is printable, without spaces");
            continue;
        }
        let hash = match user.password_hash.as_deref() {
            Some(h)
                if argon2::PasswordHash::new(h)
                    .is_ok_and(|p| p.algorithm.as_str().starts_with("argon2")) =>
            {
                Secret::new(h)
            }
            Some(_) => {
                problems.push(
                    format!("{at}.password_hash"),
                    format!("not an argon2 hash: `mailpilot relay passwd {name}` prints one"),
                );
                continue;
            }
            None => {
                problems.push(
                    format!("{at}.password_hash"),
                    format!("missing (required): `mailpilot relay passwd {name}` prints it"),
                );
                continue;
            }
        };
        if let Some(mut sender) = sender(&user, &at, accounts, problems) {
            sender.password_hash = Some(hash);
            users.insert(name, sender);
        }
    }
    users
}

/// The account and allowed From addresses of a user (or of the loopback client at `relay`).
fn sender(
    raw: &RawRelayUser,
    at: &str,
    accounts: &BTreeMap<String, Account>,
    problems: &mut Problems,
) -> Option<RelayUser> {
    let name = match &raw.account {
        Some(name) => name.clone(),
        None if accounts.len() == 1 => accounts.keys().next()?.clone(),
        None => {
            problems.push(
                format!("{at}.account"),
                "missing: several accounts are configured, name the one this mail goes out through",
            );
            return None;
        }
    };
    let Some(account) = accounts.get(&name) else {
        let names: Vec<&str> = accounts.keys().map(String::as_str).collect();
        problems.push(
            format!("{at}.account"),
            format!(
                "no account named \"{name}\" (accounts: {})",
                names.join(", ")
            ),
        );
        return None;
    };
    // The account's own addresses always pass (it may always send as itself), then the patterns.
    let mut allowed_from = account_addresses(account);
    for p in raw.allowed_from.iter().flatten() {
        if !pattern_ok(p) {
            problems.push(
                format!("{at}.allowed_from"),
                format!("\"{p}\" is not an address, \"*@domain\" or \"*\""),
            );
        } else if !allowed_from.iter().any(|a| a.eq_ignore_ascii_case(p)) {
            allowed_from.push(p.clone());
        }
    }
    Some(RelayUser {
        password_hash: None,
        account: name,
        allowed_from: FromPatterns::new(allowed_from),
    })
}

/// The addresses an account sends as without extra rights: its mailbox and its `from`.
fn account_addresses(account: &Account) -> Vec<String> {
    let mut out = vec![account.email.clone()];
    if let Some(from) = &account.from {
        let address = match (from.rfind('<'), from.rfind('>')) {
            (Some(a), Some(b)) if a < b => &from[a + 1..b],
            _ => from.trim(),
        };
        if !out.iter().any(|o| o.eq_ignore_ascii_case(address)) {
            out.push(address.to_string());
        }
    }
    out
}

fn pattern_ok(p: &str) -> bool {
    p == "*"
        || p.rsplit_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !p.contains(char::is_whitespace)
        })
}

fn hostname_ok(h: &str, problems: &mut Problems) -> bool {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if !ok {
        problems.push("relay.hostname", format!("\"{h}\" is not a host name"));
    }
    ok
}

/// `max_message_size`, `max_recipients`, `max_connections` with their defaults and bounds.
fn limits(
    size: &Option<toml::Value>,
    recipients: Option<u32>,
    connections: Option<u32>,
    problems: &mut Problems,
) -> (u64, usize, usize) {
    let size = message_size(
        size.as_ref(),
        "relay.max_message_size",
        &RELAY_SIZE,
        problems,
    );
    let mut count = |value: Option<u32>, default: usize, max: u32, key: &str| match value {
        None => default,
        Some(n) if (1..=max).contains(&n) => n as usize,
        Some(n) => {
            problems.push(
                format!("relay.{key}"),
                format!("{n} is not from 1 to {max}"),
            );
            default
        }
    };
    (
        size,
        count(recipients, DEFAULT_MAX_RECIPIENTS, 1000, "max_recipients"),
        count(
            connections,
            DEFAULT_MAX_CONNECTIONS,
            1000,
            "max_connections",
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::problems;
    use std::path::Path;

    const ACCOUNTS: &str = r#"
[accounts.work]
provider = "google"
email = "ops@example.com"
from = "Ops <alerts@example.com>"
client_id = "x"
[accounts.other]
provider = "google"
email = "other@example.com"
client_id = "x"
"#;
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$2h3Mqk3pa1p6x2ZaP3S7IgQ4j4x5G9mKfP2zq2Uh3mA";

    /// Every rule that keeps the relay closed is a problem with its key path: a listener off
    /// loopback without TLS, implicit TLS without a certificate, half a certificate, a missing or
    /// foreign hash, an unknown account, a user without an account among several, loopback keys
    /// without allow_loopback_without_auth, bad patterns and limits.
    #[test]
    fn relay_rules() {
        let p = problems(&format!(
            r#"{ACCOUNTS}
[relay]
listen = ["0.0.0.0:2525", "nonsense"]
listen_tls = ["127.0.0.1:465"]
tls_key_file = "/k.pem"
account = "work"
max_recipients = 0
max_message_size = "1GB"
idle_timeout = "0s"
[relay.users.a]
account = "work"
[relay.users.b]
password_hash = "$2y$10$bcryptbcryptbcryptbcry"
account = "work"
[relay.users.c]
password_hash = "{HASH}"
account = "nope"
[relay.users.d]
password_hash = "{HASH}"
[relay.users.e]
password_hash = "{HASH}"
account = "work"
allowed_from = ["*", "*@example.com", "bad", "x@nodot"]
"#
        ));
        let joined = p.join("\n");
        for expected in [
            "relay.listen: \"nonsense\" is not an IP address and port",
            "relay.tls_key_file: tls_cert_file and tls_key_file go together",
            "relay.listen: 0.0.0.0:2525 is not a loopback address",
            "relay.listen_tls: implicit TLS needs tls_cert_file and tls_key_file",
            "relay.users.a.password_hash: missing (required): `mailpilot relay passwd a` prints it",
            "relay.users.b.password_hash: not an argon2 hash",
            "relay.users.c.account: no account named \"nope\" (accounts: other, work)",
            "relay.users.d.account: missing: several accounts are configured",
            "relay.users.e.allowed_from: \"bad\" is not an address",
            "relay.users.e.allowed_from: \"x@nodot\" is not an address",
            "relay.account: applies to unauthenticated loopback clients only",
            "relay.max_recipients: 0 is not from 1 to 1000",
            "relay.max_message_size: \"1GB\" is not a size from 1KiB to 64MB",
            "relay.idle_timeout:",
        ] {
            assert!(joined.contains(expected), "{expected:?} not in:\n{joined}");
        }
        assert_eq!(p.len(), 14, "{joined}");
    }

    /// A relay nobody may use is refused; a user gets the account's own addresses (email and
    /// from) by default; loopback-only relays need no certificate.
    #[test]
    fn relay_defaults() {
        let p = problems(&format!("{ACCOUNTS}\n[relay]\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("nobody may send through the relay"), "{p:?}");
        let text = format!(
            "{ACCOUNTS}\n[relay]\nallow_loopback_without_auth = true\naccount = \"other\"\n[relay.users.app]\npassword_hash = \"{HASH}\"\naccount = \"work\"\n[relay.users.lab]\npassword_hash = \"{HASH}\"\naccount = \"work\"\nallowed_from = [\"*@lab.example.com\", \"OPS@example.com\"]\n"
        );
        let config = super::super::parse(&text, Path::new("/c.toml"), false).expect("valid");
        let relay = config.relay.expect("relay");
        assert_eq!(relay.listen, ["127.0.0.1:2525".parse().expect("addr")]);
        assert_eq!(relay.max_message_size, 35_000_000);
        let app = &relay.users["app"];
        assert_eq!(
            app.allowed_from.patterns(),
            ["ops@example.com", "alerts@example.com"]
        );
        assert!(app.allowed_from.allows("ALERTS@example.com"));
        assert!(!app.allowed_from.allows("ceo@example.com"));
        assert_eq!(
            relay.users["lab"].allowed_from.patterns(),
            ["ops@example.com", "alerts@example.com", "*@lab.example.com"],
            "the account's own addresses first, each once"
        );
        let anon = relay.anonymous.expect("loopback clients");
        assert_eq!(anon.account, "other");
        assert_eq!(anon.allowed_from.patterns(), ["other@example.com"]);
    }
}

//! The typed errors a caller branches on, and how an error chain reads as text.
//!
//! A leaf module: it imports nothing else from this crate (async-imap's `error.rs` is the model),
//! so every layer — config, the token engine, the network code, the CLI — can use it without a
//! circle. Which exit status each error means is decided in [`crate::exit`]; how a report is
//! printed, in [`crate::output`].

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Boxed error source for typed errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A command-line problem clap cannot see (e.g. an empty stdin where a token was expected).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Another process is doing the same work right now (a batch or job lock is held): retry later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// Work ran past its time limit (a job's `timeout`): retry later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

/// What kind of failure an [`AuthError`] is; also how it is recorded in a token error file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthErrorKind {
    /// A person must sign in again.
    NeedsAuthorization,
    /// Retry later; nothing was changed.
    Transient,
    /// Neither a retry nor a login fixes it.
    Failed,
}

impl AuthErrorKind {
    /// The recorded spelling (`needs_authorization`, `transient`, `failed`).
    pub fn name(self) -> &'static str {
        match self {
            AuthErrorKind::NeedsAuthorization => "needs_authorization",
            AuthErrorKind::Transient => "transient",
            AuthErrorKind::Failed => "failed",
        }
    }
}

impl fmt::Display for AuthErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why no access token could be had. Callers branch on the variant: it decides the exit code and
/// whether a long-running mode retries.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A person must authorize again: the grant is revoked or expired, the client is rejected, or
    /// no grant is stored. Exit 77.
    #[error("account \"{account}\" needs authorization: {reason}")]
    NeedsAuthorization {
        /// The account.
        account: String,
        /// What the provider or store said.
        reason: String,
        /// The command or setting that fixes it.
        hint: String,
    },
    /// Network trouble, a busy lock or a server-side failure; the grant is untouched. Exit 75.
    #[error("could not get an access token for account \"{account}\" (temporary; retry later): {reason}")]
    Transient {
        /// The account.
        account: String,
        /// What went wrong.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The token endpoint answered in a way no retry will fix but no login fixes either (wrong
    /// `token_url`, say). Exit 1.
    #[error("could not get an access token for account \"{account}\": {reason}")]
    Failed {
        /// The account.
        account: String,
        /// What went wrong.
        reason: String,
        /// What to check.
        hint: Option<String>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl AuthError {
    /// The kind, as recorded in error files and `--json`.
    pub fn kind(&self) -> AuthErrorKind {
        match self {
            AuthError::NeedsAuthorization { .. } => AuthErrorKind::NeedsAuthorization,
            AuthError::Transient { .. } => AuthErrorKind::Transient,
            AuthError::Failed { .. } => AuthErrorKind::Failed,
        }
    }

    /// The fix, if one is known.
    pub fn hint(&self) -> Option<&str> {
        match self {
            AuthError::NeedsAuthorization { hint, .. } => Some(hint),
            AuthError::Transient { .. } => None,
            AuthError::Failed { hint, .. } => hint.as_deref(),
        }
    }
}

/// Mail server failures a caller branches on. Built with [`ServerError::transient`],
/// [`ServerError::failed`] or [`ServerError::login_refused`], then `.with_source(..)` and
/// `.with_hint(..)` (lettre's `smtp/error.rs` is the model).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A network failure, timeout, 4xx reply or temporary authentication failure: retry later
    /// (exit 75).
    #[error("{server}: {reason} (temporary; retry later)")]
    Transient {
        /// `host:port`.
        server: String,
        /// What happened.
        reason: String,
        /// What to check.
        hint: Option<String>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The server refuses a freshly refreshed token: the grant does not give this account access
    /// (exit 77).
    #[error("{server} refused the login of account \"{account}\": {reason}")]
    LoginRefused {
        /// `host:port`.
        server: String,
        /// The account.
        account: String,
        /// The decoded server reason.
        reason: String,
        /// What to check.
        hint: String,
    },
    /// A permanent failure no retry fixes: 5xx, NO, TLS trust, protocol (exit 1).
    #[error("{server}: {reason}")]
    Failed {
        /// `host:port`.
        server: String,
        /// What happened.
        reason: String,
        /// What to check.
        hint: Option<String>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl ServerError {
    /// A failure that a later retry may not meet: network trouble, a timeout, a 4xx reply.
    pub fn transient(server: impl Into<String>, reason: impl Into<String>) -> Self {
        ServerError::Transient {
            server: server.into(),
            reason: reason.into(),
            hint: None,
            source: None,
        }
    }

    /// A failure no retry fixes: a 5xx or NO reply, an untrusted certificate, a protocol error.
    pub fn failed(server: impl Into<String>, reason: impl Into<String>) -> Self {
        ServerError::Failed {
            server: server.into(),
            reason: reason.into(),
            hint: None,
            source: None,
        }
    }

    /// The server refused a freshly refreshed token of `account`: a person must look.
    pub fn login_refused(
        server: impl Into<String>,
        account: impl Into<String>,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ServerError::LoginRefused {
            server: server.into(),
            account: account.into(),
            reason: reason.into(),
            hint: hint.into(),
        }
    }

    /// The same error caused by `error` (a login refusal has no source and stays as it is).
    #[must_use]
    pub fn with_source(mut self, error: impl Into<BoxError>) -> Self {
        match &mut self {
            ServerError::Transient { source, .. } | ServerError::Failed { source, .. } => {
                *source = Some(error.into());
            }
            ServerError::LoginRefused { .. } => {}
        }
        self
    }

    /// The same error with `text` as its `hint:` line.
    #[must_use]
    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        match &mut self {
            ServerError::Transient { hint, .. } | ServerError::Failed { hint, .. } => {
                *hint = Some(text.into());
            }
            ServerError::LoginRefused { hint, .. } => *hint = text.into(),
        }
        self
    }

    /// Whether a retry later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ServerError::Transient { .. })
    }

    /// The fix, if one is known.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ServerError::LoginRefused { hint, .. } => Some(hint),
            ServerError::Transient { hint, .. } | ServerError::Failed { hint, .. } => {
                hint.as_deref()
            }
        }
    }
}

/// A problem found in the configuration, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `accounts.work.smtp.port`, or `line 3, column 7` for syntax errors.
    pub path: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The key that seals stored secrets is missing, unusable or not the one they were sealed with:
/// a person must give the right key (or sign in again). Exit 77; nothing was overwritten.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct KeyError {
    /// What is wrong.
    pub reason: String,
    /// The setting or command that fixes it.
    pub hint: String,
}

/// The shared state database could not do what was asked. The text names the database
/// (`host:port/name`), never its password.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Unreachable, restarting, out of connections, or a query ran out of time: nothing was
    /// changed; retry later (exit 75). mailpilot never falls back to local files.
    #[error("the state database {target} is unavailable (temporary; retry later)")]
    Unavailable {
        /// `host:port/database`.
        target: String,
        /// What the driver saw.
        #[source]
        source: Option<BoxError>,
    },
    /// The server refused the login (wrong user or password, not allowed by `pg_hba.conf`): a
    /// person must fix the credentials (exit 77).
    #[error("the state database {target} refused the login")]
    LoginRefused {
        /// `host:port/database`.
        target: String,
        /// What the driver saw.
        #[source]
        source: Option<BoxError>,
    },
    /// The schema is missing, older or newer than this mailpilot, or a query failed for a reason
    /// a retry will not change (exit 1).
    #[error("the state database {target}: {reason}")]
    Failed {
        /// `host:port/database`.
        target: String,
        /// What is wrong.
        reason: String,
        /// The command that fixes it, if one does.
        hint: Option<String>,
        /// What the driver saw.
        #[source]
        source: Option<BoxError>,
    },
}

impl StateError {
    /// The `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Unavailable { .. } => Some(
                "check that PostgreSQL is running and reachable; `mailpilot state check` tests the connection".into(),
            ),
            StateError::LoginRefused { .. } => Some(
                "check [state] url (the user) and password_env/password_file/password_cmd, and the server's pg_hba.conf".into(),
            ),
            StateError::Failed { hint, .. } => hint.clone(),
        }
    }
}

/// Configuration failures a caller branches on (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No file at the resolved path.
    #[error("configuration file {} not found", path.display())]
    NotFound {
        /// The path looked at.
        path: PathBuf,
    },
    /// The path is not a configuration file mailpilot will read (a FIFO, a device, too large).
    #[error("configuration file {} cannot be used: {reason}", path.display())]
    Unusable {
        /// The path.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// The file has problems; all of them are listed.
    #[error("invalid configuration in {} ({} problem{})", path.display(), problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// A command names an account the config does not have.
    #[error("no account named \"{name}\" in {}", path.display())]
    UnknownAccount {
        /// The name asked for.
        name: String,
        /// The config file.
        path: PathBuf,
        /// Names that do exist.
        known: Vec<String>,
    },
}

impl ConfigError {
    /// A command that would fix it, where one exists.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::NotFound { path } => Some(format!(
                "create {} (start from examples/config.toml in the mailpilot repository) or pass --config FILE",
                path.display()
            )),
            ConfigError::Invalid { .. } => None,
            ConfigError::Unusable { .. } => {
                Some("point --config (or $MAILPILOT_CONFIG) at a regular TOML file".into())
            }
            ConfigError::UnknownAccount { known, .. } if known.is_empty() => {
                Some("add an [accounts.NAME] table to the configuration".into())
            }
            ConfigError::UnknownAccount { known, .. } => {
                Some(format!("configured accounts: {}", known.join(", ")))
            }
        }
    }
}

/// The `hint:` line for `err`, if a typed error in its chain knows a fix.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<AuthError>() {
            return e.hint().map(str::to_string);
        }
        if let Some(e) = cause.downcast_ref::<ServerError>() {
            return e.hint().map(str::to_string);
        }
        if let Some(e) = cause.downcast_ref::<KeyError>() {
            return Some(e.hint.clone());
        }
        if let Some(e) = cause.downcast_ref::<StateError>() {
            return e.hint();
        }
        cause
            .downcast_ref::<ConfigError>()
            .and_then(ConfigError::hint)
    })
}

/// Extra lines listed under the error (every configuration problem).
pub fn details(err: &anyhow::Error) -> Vec<String> {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<ConfigError>() {
            Some(ConfigError::Invalid { problems, .. }) => {
                Some(problems.iter().map(ToString::to_string).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// The most of a server's own text (an error description, a reply, a page) that is kept: enough to
/// say what went wrong, too little to flood a terminal, a log, a record or an environment variable.
pub const SERVER_TEXT_MAX: usize = 1024;

/// Text from outside (a server's reply, a token endpoint's description) made safe to print, store
/// and pass on: line breaks and tabs become spaces, other control characters (terminal escapes,
/// NUL) are dropped, and the result is cut to `max` bytes with `…`.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max.saturating_add(3)));
    for c in text.chars() {
        let c = match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// An error and its causes on one line (`a: b: c`), for records such as the last refresh error.
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Constructors fill the variant; sources and hints are added on top.
    #[test]
    fn server_error_constructors() {
        let e = ServerError::failed("h:1", "no")
            .with_hint("check")
            .with_source(std::io::Error::other("inner"));
        assert_eq!(e.to_string(), "h:1: no");
        assert_eq!(e.hint(), Some("check"));
        assert_eq!(error_text(&e), "h:1: no: inner");
        let e = ServerError::transient("h:1", "down");
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "h:1: down (temporary; retry later)");
        assert_eq!(e.hint(), None);
    }

    /// Control characters go, line breaks become spaces, long text is cut.
    #[test]
    fn cleans_server_text() {
        assert_eq!(clean("a\x1b[31mred\x1b[0m\r\nb\0", 100), "a[31mred[0m  b");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("ééé", 3), "é…");
    }

    /// The recorded kind spellings are the on-disk format of token error files.
    #[test]
    fn auth_kind_spellings() {
        assert_eq!(
            serde_json::to_string(&AuthErrorKind::NeedsAuthorization).expect("json"),
            "\"needs_authorization\""
        );
        assert_eq!(AuthErrorKind::Transient.to_string(), "transient");
    }

    proptest::proptest! {
        /// Cleaned text never carries a control character and stays within its bound.
        #[test]
        fn clean_is_safe_and_bounded(text in ".*", max in 0usize..64) {
            let out = clean(&text, max);
            proptest::prop_assert!(!out.chars().any(char::is_control));
            proptest::prop_assert!(out.len() <= max + '…'.len_utf8());
            proptest::prop_assert_eq!(clean(&out, usize::MAX), out.clone());
        }
    }
}

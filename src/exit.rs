//! Exit statuses and the mapping from an error to one — decided here and nowhere else.

use crate::config::ConfigError;
use crate::login::ServerError;
use crate::oauth::AuthError;

/// The process exit status. Documented in `--help` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Success = 0,
    /// Failed; a person should look (the message says what).
    Failure = 1,
    /// Bad command line or configuration.
    Usage = 2,
    /// Temporary failure (network, server, busy lock): retry later; nothing was lost.
    Transient = 75,
    /// The account needs a new authorization: run the printed `auth` command.
    NeedsAuthorization = 77,
}

impl Exit {
    /// The numeric status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// How bad it is, to pick the worst of several results (`auth refresh` over many accounts).
    pub fn severity(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Transient => 1,
            Exit::Failure => 2,
            Exit::Usage => 3,
            Exit::NeedsAuthorization => 4,
        }
    }
}

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

/// The exit status for `err`: the first typed error in its chain decides.
pub fn classify(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<AuthError>() {
            return match e {
                AuthError::NeedsAuthorization { .. } => Exit::NeedsAuthorization,
                AuthError::Transient { .. } => Exit::Transient,
                AuthError::Failed { .. } => Exit::Failure,
            };
        }
        if let Some(e) = cause.downcast_ref::<ServerError>() {
            return match e {
                ServerError::Transient { .. } => Exit::Transient,
                ServerError::LoginRefused { .. } => Exit::NeedsAuthorization,
                ServerError::Failed { .. } => Exit::Failure,
            };
        }
        if cause.downcast_ref::<Busy>().is_some() || cause.downcast_ref::<TimedOut>().is_some() {
            return Exit::Transient;
        }
        if cause.downcast_ref::<ConfigError>().is_some()
            || cause.downcast_ref::<UsageError>().is_some()
        {
            return Exit::Usage;
        }
    }
    Exit::Failure
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed error anywhere in the chain decides the status.
    #[test]
    fn classifies_through_context() {
        let e = anyhow::Error::new(AuthError::Transient {
            account: "a".into(),
            reason: "down".into(),
            source: None,
        })
        .context("while sending");
        assert_eq!(classify(&e), Exit::Transient);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Exit::Failure);
        assert_eq!(classify(&UsageError("x".into()).into()), Exit::Usage);
    }
}

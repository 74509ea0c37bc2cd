//! Exit statuses, the mapping from an error to one, and the words that name them in run lines and
//! `status` — decided here and nowhere else.

use crate::error::{
    AuthError, Busy, ConfigError, KeyError, ServerError, StateError, TimedOut, UsageError,
};

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

    /// The status a recorded exit code stands for; codes mailpilot does not use count as
    /// [`Exit::Failure`].
    pub fn from_code(code: u8) -> Exit {
        [
            Exit::Success,
            Exit::Usage,
            Exit::Transient,
            Exit::NeedsAuthorization,
        ]
        .into_iter()
        .find(|e| e.code() == code)
        .unwrap_or(Exit::Failure)
    }

    /// How bad it is, to pick the worst of several results.
    fn severity(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Transient => 1,
            Exit::Failure => 2,
            Exit::Usage => 3,
            Exit::NeedsAuthorization => 4,
        }
    }

    /// The worse of two results (`auth refresh` over many accounts, `status` over many jobs):
    /// needing a person beats a bad config beats a failure beats a transient failure.
    #[must_use]
    pub fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// The status a monitoring check (`status`) reports for a job whose last run ended with
    /// this: a job's configuration error is the job's failure, not a usage error of the check.
    #[must_use]
    pub fn as_check(self) -> Exit {
        match self {
            Exit::Usage => Exit::Failure,
            other => other,
        }
    }

    /// The word for this outcome in the daemon's run lines and `status`.
    pub fn word(self) -> &'static str {
        match self {
            Exit::Success => "ok",
            Exit::Transient => "retry-later",
            Exit::NeedsAuthorization => "needs-authorization",
            Exit::Usage => "config-error",
            Exit::Failure => "failed",
        }
    }
}

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
        if cause.downcast_ref::<KeyError>().is_some() {
            return Exit::NeedsAuthorization;
        }
        if let Some(e) = cause.downcast_ref::<StateError>() {
            return match e {
                StateError::Unavailable { .. } => Exit::Transient,
                StateError::LoginRefused { .. } => Exit::NeedsAuthorization,
                StateError::Failed { .. } => Exit::Failure,
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

    /// The worst of several results, and recorded codes read back.
    #[test]
    fn worst_and_codes() {
        assert_eq!(
            Exit::Transient.worst(Exit::Failure),
            Exit::Failure,
            "a failure beats a transient one"
        );
        assert_eq!(
            Exit::NeedsAuthorization.worst(Exit::Usage),
            Exit::NeedsAuthorization
        );
        assert_eq!(Exit::Success.worst(Exit::Success), Exit::Success);
        for e in [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::Transient,
            Exit::NeedsAuthorization,
        ] {
            assert_eq!(Exit::from_code(e.code()), e);
        }
        assert_eq!(Exit::from_code(101), Exit::Failure);
    }
}

//! OAuth2 token lifecycle: the stored grant, the refresh lock, the refresh grant, and the rules that
//! decide when to refresh.
//!
//! - [`token`]: the stored grant and expiry arithmetic; pure.
//! - [`store`]: token files, lock files, error records; never talks to the network.
//! - [`refresh`]: one refresh_token grant request and the classification of its failure; never
//!   touches files.
//! - [`source`]: "give me a valid access token": read, lock, re-read, adopt or refresh, persist.

pub mod login;
pub mod refresh;
pub mod source;
pub mod store;
pub mod token;

pub use refresh::{Refreshed, Refresher};
pub use source::{Fetch, Obtained, TokenSource};
pub use store::{FileStore, LastError, TokenStore};
pub use token::StoredToken;

/// Boxed error source for typed errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// The kind as recorded in error files and `--json`: `needs_authorization`, `transient`, `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::NeedsAuthorization { .. } => "needs_authorization",
            AuthError::Transient { .. } => "transient",
            AuthError::Failed { .. } => "failed",
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

/// The command that gets a new grant for `account`.
pub fn login_command(account: &str) -> String {
    format!("mailpilot auth login {account}")
}

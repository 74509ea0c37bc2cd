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

/// The command that gets a new grant for `account`.
pub fn login_command(account: &str) -> String {
    format!("mailpilot auth login {account}")
}

//! OAuth2 token lifecycle: the stored grant, the refresh lock, the refresh grant, and the rules that
//! decide when to refresh.
//!
//! - [`token`]: the stored grant and expiry arithmetic; pure.
//! - [`record`]: the stored form of a grant (plain or sealed), shared by every backend; no I/O.
//! - [`store`]: the `TokenStore` interface, and token files, lock files, error records; never
//!   talks to the network.
//! - [`pg`]: the same interface on the shared state database (advisory locks across hosts).
//! - [`backend`]: the configured one of the two, as one type.
//! - [`http`]: bounded HTTP to the OAuth endpoints; never touches files.
//! - [`discovery`]: the authorization server resolved: configured endpoints, the rest from the
//!   issuer's metadata (cached in the store).
//! - [`assertion`]: signed JWTs (an app's `private_key_jwt`, a service account's grant); reads
//!   only its key files.
//! - [`refresh`]: one token request per grant (refresh token, client credentials, JWT bearer)
//!   and the classification of its failure; never touches the token store.
//! - [`login`]: first grants of a person (browser, paste, device code).
//! - [`scope`]: which scopes a grant lacks and which a refresh asks for; pure.
//! - [`source`]: "give me a valid access token": read, lock, re-read, adopt or refresh, persist.

pub mod assertion;
pub mod backend;
pub mod discovery;
pub mod http;
pub mod login;
pub mod pg;
pub mod record;
pub mod refresh;
pub mod scope;
pub mod source;
pub mod store;
pub mod token;

pub use backend::{Store, StoreLock};
pub use discovery::AuthServer;
pub use refresh::{Refreshed, Refresher};
pub use source::{Fetch, Obtained, TokenSource};
pub use store::{FileStore, LastError, TokenStore};
pub use token::StoredToken;

/// The `oauth2` client of `account`: its id, the resolved secret (`None` for public clients) and
/// how it authenticates at the token endpoint. Callers add the endpoints their grant needs.
pub(crate) fn client(
    account: &crate::config::Account,
    secret: Option<&crate::secret::Secret>,
) -> oauth2::basic::BasicClient {
    let auth_type = match account.client_auth {
        crate::config::ClientAuth::Body => oauth2::AuthType::RequestBody,
        crate::config::ClientAuth::Basic => oauth2::AuthType::BasicAuth,
    };
    let client = oauth2::basic::BasicClient::new(oauth2::ClientId::new(account.client_id.clone()))
        .set_auth_type(auth_type);
    match secret {
        Some(s) => client.set_client_secret(oauth2::ClientSecret::new(s.expose().to_string())),
        None => client,
    }
}

/// The command that gets a new grant for `account`.
pub fn login_command(account: &str) -> String {
    format!("mailpilot auth login {account}")
}

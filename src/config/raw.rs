//! The serde mirror of `config.toml`: every field optional and loosely typed, so that validation can
//! report *all* problems with their key paths instead of stopping at the first.
//!
//! Unknown keys are not rejected here (`deny_unknown_fields` would stop at the first one); the loader
//! collects them with `serde_ignored` and reports each with a "did you mean".

use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::secret::Secret;

/// `[accounts.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawAccount {
    /// `google`, `microsoft` or `custom`.
    pub provider: Option<String>,
    /// `authorization_code` (default) or `client_credentials`.
    pub grant: Option<String>,
    /// The mailbox address; also the SASL user name.
    pub email: Option<String>,
    /// The person who signs in, when not `email`.
    pub sign_in_as: Option<String>,
    /// The default From, when not `email`.
    pub from: Option<String>,
    /// OAuth2 client id.
    pub client_id: Option<String>,
    /// Inline client secret (refused when the config file is world-readable).
    pub client_secret: Option<Secret>,
    /// Name of an environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Command printing the client secret.
    pub client_secret_cmd: Option<String>,
    /// A Google service account's JSON key, for `grant = "service_account"`.
    pub service_account_file: Option<PathBuf>,
    /// The app's certificate (PEM), for client credentials without a secret.
    pub client_certificate_file: Option<PathBuf>,
    /// The app's private key (PEM), with `client_certificate_file`.
    pub client_key_file: Option<PathBuf>,
    /// `body` or `basic`: how the client authenticates to the token endpoint.
    pub client_auth: Option<String>,
    /// Microsoft tenant.
    pub tenant: Option<String>,
    /// Microsoft cloud: `global`, `usgov`, `usgov-dod` or `china`.
    pub cloud: Option<String>,
    /// Scope override.
    pub scopes: Option<Vec<String>>,
    /// Authorization endpoint override.
    pub auth_url: Option<String>,
    /// Token endpoint override (required for `custom`).
    pub token_url: Option<String>,
    /// Device authorization endpoint override.
    pub device_url: Option<String>,
    /// Revocation endpoint override.
    pub revoke_url: Option<String>,
    /// The authorization server's issuer: endpoints come from its metadata (discovery).
    pub issuer: Option<String>,
    /// Extra parameters of the authorization request.
    pub auth_params: Option<std::collections::BTreeMap<String, String>>,
    /// The redirect URI of logins, when the client registration needs a given one.
    pub redirect_uri: Option<String>,
    /// The proxy of this account's connections (`"direct"`: none, whatever the file's `proxy`).
    pub proxy: Option<String>,
    /// Extra root certificate (PEM) for the OAuth endpoints and servers without their own.
    pub ca_file: Option<PathBuf>,
    /// Refresh when the access token has less than this left (`5m`).
    pub refresh_margin: Option<String>,
    /// Timeout of one token endpoint request (`30s`).
    pub token_timeout: Option<String>,
    /// Largest message read over IMAP: bytes, or text such as `"50MB"`.
    pub max_message_size: Option<toml::Value>,
    /// Outgoing server.
    pub smtp: Option<RawServer>,
    /// Incoming server.
    pub imap: Option<RawServer>,
}

/// `[accounts.NAME.smtp]` or `[accounts.NAME.imap]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    /// Host name or address.
    pub host: Option<String>,
    /// TCP port; `i64` so that out-of-range values get our own message.
    pub port: Option<i64>,
    /// `implicit`, `starttls` or `none`.
    pub tls: Option<String>,
    /// Extra root certificate (PEM), relative to the config file's directory.
    pub ca_file: Option<PathBuf>,
    /// `xoauth2` or `oauthbearer`.
    pub mechanism: Option<String>,
}

/// `[sendmail]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawSendmail {
    /// The account local programs send through.
    pub account: Option<String>,
    /// Local name → address.
    pub aliases: Option<std::collections::BTreeMap<String, String>>,
    /// `auto`, `always` or `never`.
    pub rewrite_from: Option<String>,
    /// Give up on a message after this long (`5d`).
    pub max_age: Option<String>,
    /// `status` fails when a message waited longer (`1h`).
    pub warn_after: Option<String>,
    /// The drop directory for other local users (absolute).
    pub drop_dir: Option<PathBuf>,
}

/// `[state]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawState {
    /// The key that seals tokens at rest (32 bytes, or their base64).
    pub key_file: Option<PathBuf>,
    /// `files` (default) or `postgres`.
    pub backend: Option<String>,
    /// The PostgreSQL connection URL (`postgresql://user@host:port/db?sslmode=require`).
    pub url: Option<String>,
    /// The database password, from the environment.
    pub password_env: Option<String>,
    /// The database password, from a file.
    pub password_file: Option<PathBuf>,
    /// The database password, from a command's stdout.
    pub password_cmd: Option<String>,
    /// The schema that holds mailpilot's tables.
    pub schema: Option<String>,
    /// Extra CA certificates (PEM) for the database's TLS certificate.
    pub ca_file: Option<PathBuf>,
}

/// `[relay]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawRelay {
    /// Addresses (`IP:port`) of plain listeners (STARTTLS offered when a certificate is set).
    pub listen: Option<Vec<String>>,
    /// Addresses of implicit-TLS listeners (port 465 style).
    pub listen_tls: Option<Vec<String>>,
    /// The certificate chain (PEM).
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// The name in the greeting (default: this host's name).
    pub hostname: Option<String>,
    /// Bytes or a size with a unit (`"35MB"`).
    pub max_message_size: Option<toml::Value>,
    /// Recipients per message.
    pub max_recipients: Option<u32>,
    /// Connections at once.
    pub max_connections: Option<u32>,
    /// Longest wait for the client's next command (`5m`).
    pub idle_timeout: Option<String>,
    /// Longest one command or one message's DATA may take (`10m`).
    pub command_timeout: Option<String>,
    /// Loopback clients may send without AUTH.
    pub allow_loopback_without_auth: Option<bool>,
    /// The account unauthenticated loopback clients send through.
    pub account: Option<String>,
    /// The From addresses unauthenticated loopback clients may use.
    pub allowed_from: Option<Vec<String>>,
    /// `[relay.users.NAME]`.
    pub users: Option<std::collections::BTreeMap<String, RawRelayUser>>,
}

/// `[relay.users.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawRelayUser {
    /// The argon2 hash `mailpilot relay passwd NAME` prints.
    pub password_hash: Option<String>,
    /// The account this user's mail goes out through.
    pub account: Option<String>,
    /// The From addresses this user may use.
    pub allowed_from: Option<Vec<String>>,
}

/// The scheduling keys of `[jobs.NAME]` as written. Every other key of the table is a long option
/// of the job's command (`to = ["a@x"]` → `--to a@x`), checked by that command's own parser.
#[derive(Debug, Default, Deserialize)]
pub struct RawJob {
    /// `send` or `poll`.
    pub kind: Option<String>,
    /// A cron expression.
    pub schedule: Option<String>,
    /// An interval (`15m`).
    pub every: Option<String>,
    /// Longest a run may take (`10m`).
    pub timeout: Option<String>,
    /// A shell command run when the job fails.
    pub on_failure: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// The field names serde knows for `T`, for "did you mean" suggestions.
///
/// Runs `T::deserialize` against a deserializer that records the field list passed to
/// `deserialize_struct` and then fails; no data is involved.
pub fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldCapture(&mut fields));
    fields
}

struct FieldCapture<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldCapture<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field capture"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field capture"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capture sees the real field lists.
    #[test]
    fn captures_field_names() {
        let server = field_names::<RawServer>();
        assert_eq!(server, ["host", "port", "tls", "ca_file", "mechanism"]);
        assert!(field_names::<RawAccount>().contains(&"client_secret_cmd"));
    }
}

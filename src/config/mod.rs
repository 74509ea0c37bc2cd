//! Configuration: `config.toml` → [`raw`] serde mirror → validated [`Config`].
//!
//! Validation happens once, here, and reports every problem with its key path; everything after it
//! works with resolved values (presets applied, paths absolute, durations parsed). Secrets are
//! described by a [`SecretSource`] and resolved only when a command needs them.

mod provider;
mod proxy;
pub mod raw;
mod secrets;
mod spelled;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

pub use provider::{Provider, ServerPreset};
pub use proxy::{Proxy, ProxyKind};
pub use secrets::{SecretSource, MAX_SECRET_BYTES};
pub use spelled::{
    ClientAuth, Cloud, Grant, JobKind, Mechanism, Protocol, ProviderKind, RewriteFrom, Spelled, Tls,
};
pub(crate) use validate::endpoints::check_url;

use crate::error::{ConfigError, Problem, UsageError};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Accounts by name, sorted.
    pub accounts: BTreeMap<String, Account>,
    /// Where mail templates live (`templates_dir`, default `templates/` next to the config file).
    pub templates_dir: PathBuf,
    /// Named jobs (`[jobs.NAME]`), sorted.
    pub jobs: BTreeMap<String, Job>,
    /// How `sendmail` maps what local programs hand it (`[sendmail]`).
    pub sendmail: Sendmail,
    /// The SMTP submission listener for programs that only know a password (`[relay]`).
    pub relay: Option<Relay>,
    /// Where state lives and how it is protected (`[state]`).
    pub state: State,
}

/// `[state]`: where the state lives and how it is protected.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The key file that seals tokens at rest (absolute); `None`: the systemd credential
    /// `mailpilot.key` if there is one, else tokens are stored in plain (files 0600).
    pub key_file: Option<PathBuf>,
    /// Where the state is kept.
    pub backend: Backend,
}

/// `[state] backend`: files on this host, or a PostgreSQL database shared by several.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// `$XDG_STATE_HOME/mailpilot` (the default): one host.
    #[default]
    Files,
    /// A PostgreSQL database: any number of hosts share grants, locks and queues.
    Postgres(Postgres),
}

/// `[state] backend = "postgres"`: how to reach the database.
#[derive(Debug, Clone)]
pub struct Postgres {
    /// The connection URL as written (it holds no password: that is refused at validation).
    pub url: String,
    /// Where the password comes from, if the server asks for one.
    pub password: Option<SecretSource>,
    /// The schema of mailpilot's tables (a plain lowercase identifier).
    pub schema: String,
    /// Extra CA certificates for the server's TLS certificate (absolute).
    pub ca_file: Option<PathBuf>,
}

/// The schema used when `[state] schema` is not set.
pub const DEFAULT_SCHEMA: &str = "mailpilot";

/// `[relay]`: where the submission listener listens, its limits, and who may send through it.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Plain listeners (STARTTLS offered when `tls` is set); loopback unless configured.
    pub listen: Vec<std::net::SocketAddr>,
    /// Implicit-TLS listeners.
    pub listen_tls: Vec<std::net::SocketAddr>,
    /// The certificate chain and key files (PEM), for STARTTLS and `listen_tls`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The name in the greeting and EHLO reply (`None`: this host's name).
    pub hostname: Option<String>,
    /// Advertised as SIZE; larger messages get 552.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Connections served at once; more get 421.
    pub max_connections: usize,
    /// Longest wait for the client's next command.
    pub idle_timeout: Duration,
    /// Longest one command line or one message's DATA may take once started.
    pub command_timeout: Duration,
    /// Who sends without AUTH from loopback (`allow_loopback_without_auth`): account and From.
    pub anonymous: Option<RelayUser>,
    /// The users who log in, by name.
    pub users: BTreeMap<String, RelayUser>,
}

/// A relay user (`[relay.users.NAME]`), or the unauthenticated loopback client.
#[derive(Debug, Clone)]
pub struct RelayUser {
    /// The argon2 PHC string (`None` for the unauthenticated loopback client); redacted in
    /// `Debug` like any secret, since it allows guessing the password offline.
    pub password_hash: Option<crate::secret::Secret>,
    /// The account the mail goes out through.
    pub account: String,
    /// The From addresses allowed: the account's own, then `allowed_from`.
    pub allowed_from: FromPatterns,
}

/// From addresses a relay sender may use: `ops@example.com`, `*@example.com` (a domain) or `*`
/// (any); compared without regard to case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FromPatterns(Vec<String>);

impl FromPatterns {
    /// These patterns (already validated).
    pub fn new(patterns: Vec<String>) -> FromPatterns {
        FromPatterns(patterns)
    }

    /// Whether `address` matches one of them.
    pub fn allows(&self, address: &str) -> bool {
        self.0.iter().any(|p| {
            p == "*"
                || match p.strip_prefix("*@") {
                    Some(domain) => address
                        .rsplit_once('@')
                        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
                    None => p.eq_ignore_ascii_case(address),
                }
        })
    }

    /// The patterns, as written.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// `[sendmail]`: the account local programs' mail goes through, the addresses of local names, and
/// how long the outbox keeps trying.
#[derive(Debug, Clone)]
pub struct Sendmail {
    /// The account (default: the only one).
    pub account: Option<String>,
    /// Local name → address (`root = "ops@example.com"`); `default` for any other local name.
    pub aliases: BTreeMap<String, String>,
    /// When From becomes the account's.
    pub rewrite_from: RewriteFrom,
    /// A message not delivered within this moves to `failed/` (default 5 days, as Postfix).
    pub max_age: Duration,
    /// `status` fails when a message has waited longer than this (default 1 hour).
    pub warn_after: Duration,
    /// A directory other local users' `sendmail` drops messages into (sticky, writable but not
    /// readable by them), picked up by the daemon of the user who owns it.
    pub drop_dir: Option<PathBuf>,
}

impl Default for Sendmail {
    fn default() -> Sendmail {
        Sendmail {
            account: None,
            aliases: BTreeMap::new(),
            rewrite_from: RewriteFrom::default(),
            max_age: Duration::from_secs(5 * 86_400),
            warn_after: Duration::from_secs(3600),
            drop_dir: None,
        }
    }
}

/// A named job: a `send` or `poll` command line written as a table, with an optional schedule.
#[derive(Debug, Clone)]
pub struct Job {
    /// The `NAME` of `[jobs.NAME]`.
    pub name: String,
    /// What it runs.
    pub kind: JobKind,
    /// The command's arguments, from the table's keys (`to = ["a@x"]` → `--to a@x`).
    pub args: Vec<String>,
    /// When the daemon runs it.
    pub schedule: Option<Schedule>,
    /// Longest a run may take.
    pub timeout: Option<Duration>,
    /// A shell command run when the job fails (`MAILPILOT_JOB`, `MAILPILOT_EXIT_CODE`,
    /// `MAILPILOT_ERROR` in its environment).
    pub on_failure: Option<String>,
}

/// When a job runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression (5 fields, or 6 with seconds first), local time.
    Cron(String),
    /// A fixed interval.
    Every(Duration),
}

/// One account: who we are, how to get tokens, which servers to talk to.
#[derive(Debug, Clone)]
pub struct Account {
    /// The `NAME` of `[accounts.NAME]`; safe to use in file names.
    pub name: String,
    /// Preset in use.
    pub provider: Provider,
    /// How it gets tokens (a person's grant or the app's own credentials).
    pub grant: Grant,
    /// Mailbox address and SASL user: the mailbox that is opened.
    pub email: String,
    /// Who signs in at `auth login` (the login hint), when not the mailbox itself: a delegate
    /// reading a shared mailbox.
    pub sign_in_as: Option<String>,
    /// The default `From` (`addr` or `Name <addr>`), when not `email`: send-as or send on behalf.
    pub from: Option<String>,
    /// OAuth2 client id.
    pub client_id: String,
    /// Where the client secret comes from; `None` for public clients.
    pub client_secret: Option<SecretSource>,
    /// How the client authenticates to the token endpoint.
    pub client_auth: ClientAuth,
    /// The app's certificate and key, for client credentials with a signed assertion
    /// (`private_key_jwt`) instead of a secret.
    pub client_certificate: Option<ClientCertificate>,
    /// A Google service account's JSON key file, for `grant = "service_account"`.
    pub service_account: Option<PathBuf>,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// OAuth2 endpoints.
    pub endpoints: Endpoints,
    /// The proxy its connections go through (its own `proxy`, else the file's); `None`: direct
    /// (the OAuth endpoints then honour `HTTPS_PROXY`/`NO_PROXY`).
    pub proxy: Option<Proxy>,
    /// Extra root certificate for the OAuth endpoints (and the servers without their own).
    pub ca_file: Option<PathBuf>,
    /// Extra parameters of the authorization request (`auth_params`), in order.
    pub auth_params: Vec<(String, String)>,
    /// The redirect URI of logins, when the client registration needs a given one.
    pub redirect_uri: Option<url::Url>,
    /// A token with less than this left is refreshed before use.
    pub refresh_margin: Duration,
    /// Timeout of one token endpoint request.
    pub token_timeout: Duration,
    /// The largest message `poll` and `watch` fetch (bytes); a larger one is quarantined.
    pub max_message_size: u64,
    /// Outgoing server, if the account sends.
    pub smtp: Option<Server>,
    /// Incoming server, if the account reads.
    pub imap: Option<Server>,
}

/// An app's certificate (registered at the provider) and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The certificate (its thumbprint names the key to the provider).
    pub certificate: PathBuf,
    /// The RSA private key; refused when group or others may read it.
    pub key: PathBuf,
}

/// OAuth2 endpoints of an account as configured; with an `issuer`, the ones not given are
/// discovered from its metadata when first needed (`oauth::discovery`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The authorization server's issuer identifier (discovery, and the `iss` check of RFC 9207).
    pub issuer: Option<String>,
    /// Authorization endpoint (browser logins).
    pub auth_url: Option<String>,
    /// Token endpoint (refresh grant); `None` only with an `issuer` to discover it from.
    pub token_url: Option<String>,
    /// Device authorization endpoint.
    pub device_url: Option<String>,
    /// Revocation endpoint.
    pub revoke_url: Option<String>,
}

/// A mail server of an account.
#[derive(Debug, Clone)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS mode.
    pub tls: Tls,
    /// Extra root certificate (absolute path).
    pub ca_file: Option<PathBuf>,
    /// The proxy connections go through.
    pub proxy: Option<Proxy>,
    /// SASL mechanism.
    pub mechanism: Mechanism,
}

/// The largest configuration file read: real ones are a few KB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

impl Config {
    /// Reads and validates the configuration file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::NotFound`] or [`ConfigError::Invalid`] (with every problem), or an I/O error
    /// with the file's path.
    pub fn load(path: &Path) -> Result<Config> {
        let unusable = |reason: &str| ConfigError::Unusable {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                }
                .into())
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("failed to read configuration file {}", path.display())
                })
            }
        };
        // A FIFO would block the read forever, a device (/dev/zero) never end.
        if !meta.is_file() {
            return Err(unusable("it is not a regular file").into());
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(unusable(&format!(
                "it is larger than {} KiB",
                MAX_CONFIG_BYTES / 1024
            ))
            .into());
        }
        let bytes = crate::fsutil::read_limited(path, MAX_CONFIG_BYTES)
            .with_context(|| format!("failed to read configuration file {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| unusable("it is not UTF-8 text"))?;
        let world_readable = file_mode(path)? & 0o004 != 0;
        Ok(Self::from_text(&text, path, world_readable)?)
    }

    /// Validates configuration `text` as if read from `path` (relative paths resolve against its
    /// directory); `world_readable` refuses inline secrets.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem.
    pub fn from_text(text: &str, path: &Path, world_readable: bool) -> Result<Config, ConfigError> {
        validate::parse(text, path, world_readable).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// The account called `name`.
    ///
    /// # Errors
    /// [`ConfigError::UnknownAccount`] listing the configured names.
    pub fn account(&self, name: &str) -> Result<&Account> {
        self.accounts.get(name).ok_or_else(|| {
            ConfigError::UnknownAccount {
                name: name.to_string(),
                path: self.path.clone(),
                known: self.accounts.keys().cloned().collect(),
            }
            .into()
        })
    }
}

impl Server {
    /// `host:port`, as messages name the server.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Account {
    /// The account's SMTP or IMAP server.
    ///
    /// # Errors
    /// [`UsageError`] when the account has none.
    pub fn server(&self, protocol: Protocol) -> Result<&Server, UsageError> {
        let server = match protocol {
            Protocol::Smtp => self.smtp.as_ref(),
            Protocol::Imap => self.imap.as_ref(),
        };
        server.ok_or_else(|| {
            UsageError(format!(
                "account \"{}\" has no {} server: add an [accounts.{}.{protocol}] table with host and port",
                self.name,
                protocol.name().to_uppercase(),
                self.name
            ))
        })
    }
}

fn file_mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("failed to read metadata of {}", path.display()))?;
    Ok(meta.permissions().mode())
}

//! mailpilot: unattended mail over SMTP and IMAP with OAuth2.
//!
//! # Layout
//! - [`cli`]: clap definitions, one file per subcommand; resolves flags into a [`cli::Ctx`] and calls
//!   the library. Never prints directly (uses [`output`]).
//! - [`config`]: `config.toml` → validated [`config::Config`]; provider presets; secret sources.
//!   Reads the config file only; resolves secrets only when asked.
//! - [`oauth`]: the token lifecycle — [`oauth::store`] (files, locks; never the network),
//!   [`oauth::refresh`] (one refresh request; never files), [`oauth::source`] (when to refresh,
//!   locking, adopting a peer's token).
//! - [`sasl`]: XOAUTH2 / OAUTHBEARER strings and server error challenges; pure.
//! - [`mail_auth`]: what SMTP and IMAP logins share: the one refresh-and-retry on a rejected
//!   token, and the error for a refused login.
//! - [`net`]: TCP (timeouts, `TCP_NODELAY`) and TLS (rustls with ring, `ca_file`) for both
//!   protocols.
//! - [`smtp`]: connect, TLS, AUTH, send (lettre); owns no token storage (asks a `TokenSource`).
//! - [`imap`]: connect, TLS/STARTTLS, AUTHENTICATE (async-imap), select, search, fetch with
//!   `BODY.PEEK`, flag/move/delete.
//! - [`poll`]: checkpointed polling (state per account+mailbox, lock), handlers, actions.
//! - [`journal`]: the append-only send journal of a mail merge; never talks to the network.
//! - [`send`]: mail merge: prepare every row, then send over one session with the journal.
//! - [`compose`]: drafts → RFC 5322 messages (lettre); validates addresses and header values.
//! - [`schedule`]: job timing (cron, intervals), job locks and last outcomes, on_failure hooks,
//!   crontab/systemd text; never runs a job's command itself.
//! - [`output`]: the only place that prints; stdout is data only.
//! - [`error`]: the typed errors callers branch on (usage, busy, timed out, auth, server,
//!   config) and error-chain text; a leaf that imports nothing from the crate.
//! - [`exit`]: exit statuses, the mapping from errors to them, and their words, in one place.
//! - [`fsutil`]: atomic file replacement (temp file, fsync, rename, fsync of the directory).
//! - [`paths`]: environment variables for paths, read once at start-up.
//! - [`clock`]: "now" as a parameter, and time formatting.
//! - [`secret`]: the redacting string type for tokens and client secrets.

pub mod cli;
pub mod clock;
pub mod compose;
pub mod config;
pub mod error;
pub mod exit;
pub mod fsutil;
pub mod imap;
pub mod journal;
pub mod mail_auth;
pub mod net;
pub mod oauth;
pub mod output;
pub mod paths;
pub mod poll;
pub mod sasl;
pub mod schedule;
pub mod secret;
pub mod send;
pub mod smtp;

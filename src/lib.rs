//! mailpilot: unattended mail over SMTP and IMAP with OAuth2.
//!
//! # Layout
//! By layer, lowest first; a module uses only modules of lower layers (ARCHITECTURE.md has the
//! rules, the token lifecycle, the state files and the invariants; `tests/layers.rs` checks them).
//!
//! 0. Leaves, importing nothing from the crate:
//!    - [`error`]: the typed errors callers branch on (usage, busy, timed out, auth, server,
//!      config), hints, and error-chain text.
//!    - [`secret`]: the redacting string type for tokens, client secrets and SASL strings.
//!    - [`clock`]: "now" as a parameter, and time formatting.
//!    - [`paths`]: environment variables for paths, read once at start-up.
//!    - [`fsutil`]: atomic file replacement (temp file, fsync, rename, fsync of the directory),
//!      private directories, advisory locks and waiting for them.
//! 1. Settings and the edges of a run:
//!    - [`config`]: `config.toml` → validated [`config::Config`]; provider presets; the words of the
//!      file as enums. Reads the config file only; resolves secrets only when asked.
//!    - [`exit`]: exit statuses, the mapping from errors to them, and their words.
//!    - [`output`]: the only place that prints; stdout is data only.
//!    - [`trust`]: the TLS roots every client connection trusts (built-in, the system's, a
//!      `ca_file`).
//!    - [`seal`]: secrets at rest: tokens sealed (ChaCha20-Poly1305) under the state key.
//! 2. [`db`]: the shared state database (`[state] backend = "postgres"`): sessions with timeouts,
//!    versioned schema migrations, advisory locks, and what a failure means (outage 75, refused
//!    login 77); knows nothing of tokens or mail.
//! 3. Parts that each own one concern:
//!    - [`oauth`]: the token lifecycle — [`oauth::store`] (files, locks; never the network),
//!      [`oauth::refresh`] (one refresh request; never files), [`oauth::source`] (when to refresh,
//!      locking, adopting a peer's token), [`oauth::login`] (first grants), [`oauth::discovery`]
//!      (the issuer's metadata).
//!    - [`sasl`]: XOAUTH2 / OAUTHBEARER strings and server error challenges; pure.
//!    - [`net`]: TCP (timeouts, `TCP_NODELAY`, `TCP_QUICKACK`), proxies (HTTP CONNECT, SOCKS5) and
//!      TLS (rustls with ring); no mail protocol.
//!    - [`compose`]: drafts → RFC 5322 messages (lettre); templates; merge data; validates
//!      addresses and header values; `compose::submission` makes what a `sendmail` caller hands
//!      over sendable.
//!    - [`journal`]: the append-only send journal of a mail merge; never talks to the network.
//!    - [`schedule`]: job timing (cron, intervals), job locks and last outcomes, on_failure hooks,
//!      crontab/systemd text; never runs a job's command itself.
//! 4. [`mail_auth`]: what SMTP and IMAP logins share: the one refresh-and-retry on a rejected
//!    token, and the error for a refused login.
//! 5. The protocols; neither stores tokens (they ask a `TokenSource`):
//!    - [`smtp`]: connect, TLS/STARTTLS, AUTH, send; `smtp::wire` is the client protocol itself
//!      (bounded replies, PIPELINING, dot-stuffing).
//!    - [`imap`]: connect, TLS/STARTTLS, AUTHENTICATE (async-imap), STATUS, SELECT/EXAMINE, search,
//!      fetch with `BODY.PEEK` (one message, or many streamed), flag/move/delete, IDLE.
//! 6. The work:
//!    - [`send`]: mail merge: check every row, then render and send them one at a time over one
//!      session with the journal (`send::batch`).
//!    - [`outbox`]: the durable outbox local programs' mail waits in (`sendmail`), delivered
//!      over one session per account; a message leaves it only after the server's 250.
//!    - [`poll`]: checkpointed polling and watching, handlers, actions; reports to a [`poll::Sink`].
//! 7. Front ends over the work:
//!    - [`relay`]: the SMTP submission listener for programs that only know a password: the
//!      protocol without I/O (`relay::proto`), argon2 passwords and the login throttle
//!      (`relay::auth`), and the hand-off into the outbox (250 only once the message is stored);
//!      reports to a [`relay::Report`].
//!    - [`migrate`]: `state migrate`: the whole state moved between files and the database.
//! 8. [`cli`]: clap definitions, one file per subcommand; resolves flags into a [`cli::Ctx`] and
//!    calls the library. Prints only through [`output`].

pub mod cli;
pub mod clock;
pub mod compose;
pub mod config;
pub mod db;
pub mod error;
pub mod exit;
pub mod fsutil;
pub mod imap;
pub mod journal;
pub mod mail_auth;
pub mod migrate;
pub mod net;
pub mod oauth;
pub mod outbox;
pub mod output;
pub mod paths;
pub mod poll;
pub mod relay;
pub mod sasl;
pub mod schedule;
pub mod seal;
pub mod secret;
pub mod send;
pub mod smtp;
pub mod trust;

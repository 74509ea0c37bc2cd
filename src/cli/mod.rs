//! The command line: clap definitions (one file per subcommand, each with `Args` and `run`) and the
//! context every command receives.

mod auth;
mod config;
mod daemon;
mod generate;
mod jobs;
mod poll;
pub(crate) mod queue;
mod relay;
pub(crate) mod run;
mod schedule;
mod send;
pub mod sendmail;
mod state;
mod status;
mod watch;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::config::Backend;
use crate::config::Config;
use crate::db::Db;
use crate::exit::Exit;
use crate::oauth::Store;
use crate::output::Output;
use crate::paths::Env;

const AFTER_HELP: &str = "\
Exit status:
  0   success
  1   failed (the message says what to look at)
  2   bad command line or configuration
  75  temporary failure (network, server, busy lock): retry later, nothing was lost
  77  the account needs authorization: run the `mailpilot auth ...` command printed in the hint

Files:
  config  --config, else $MAILPILOT_CONFIG, else $XDG_CONFIG_HOME/mailpilot/config.toml,
          else /etc/mailpilot/config.toml
  state   $XDG_STATE_HOME/mailpilot/ (default ~/.local/state/mailpilot/): tokens/ (mode 0700)";

/// Send and read mail from unattended jobs over SMTP and IMAP with OAuth2 (Gmail, Microsoft 365,
/// any XOAUTH2/OAUTHBEARER server), keeping tokens fresh without ever asking you to log in again
/// while the grant is valid.
#[derive(Debug, Parser)]
#[command(name = "mailpilot", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: $MAILPILOT_CONFIG or $XDG_CONFIG_HOME/mailpilot/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage OAuth2 grants: import, token, status, refresh, logout
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Inspect the configuration
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Send one message, a templated message, or a mail merge through an account's SMTP server
    Send(Box<send::Args>),
    /// Hand each new message of a mailbox to a handler once (JSON, --exec, --save)
    Poll(Box<poll::Args>),
    /// Watch a mailbox (IMAP IDLE) and handle each new message as it arrives, like poll
    Watch(Box<watch::Args>),
    /// Run a job from the configuration now (what a crontab line or systemd service calls)
    Run(run::Args),
    /// Run every scheduled job on its own clock until SIGTERM/SIGINT (SIGHUP reloads the config)
    Daemon(daemon::Args),
    /// List the configured jobs with their next run and last outcome
    Jobs(jobs::Args),
    /// Summarise accounts (grant health) and jobs (last run); non-zero when something needs a human
    Status(status::Args),
    /// Print crontab lines or systemd units that run the configured jobs
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Take a message on stdin like /usr/sbin/sendmail (also: the binary run as `sendmail`)
    Sendmail(sendmail::Args),
    /// The outbox: list, flush, show, retry, drop
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// An SMTP submission port for programs that only know a password ([relay]); `relay passwd NAME`
    Relay(relay::Args),
    /// The state: create the database schema (init), check, migrate files <-> PostgreSQL, rotate-key
    #[command(subcommand)]
    State(state::StateCommand),
    /// Print shell completions: bash, zsh, fish (elvish, powershell)
    Completions(generate::CompletionsArgs),
    /// Print the man page, or write all pages into a directory (--dir)
    Man(generate::ManArgs),
}

/// The command line of the binary run under the name `sendmail` (a symlink, as
/// `/usr/sbin/sendmail`): every argument is sendmail's, none is mailpilot's.
pub fn as_sendmail(argv: &[std::ffi::OsString]) -> Option<Cli> {
    let program = std::path::Path::new(argv.first()?).file_name()?;
    if program != "sendmail" {
        return None;
    }
    Some(Cli {
        config: None,
        verbose: 0,
        quiet: false,
        json: false,
        command: Command::Sendmail(sendmail::Args {
            args: argv[1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }),
    })
}

/// What every command gets: resolved paths, output settings, the clock.
pub struct Ctx {
    env: Env,
    config_flag: Option<PathBuf>,
    /// A configuration already loaded (the daemon's), used instead of reading the file again.
    preloaded: Option<Config>,
    /// Where output goes.
    pub out: Output,
    /// "Now".
    pub clock: std::sync::Arc<dyn Clock>,
    /// The `[state]` of the configuration last loaded (so `store` need not read the file again),
    /// and the key last read: its path, modification time and the key.
    key: std::sync::Mutex<KeyCache>,
    /// The state database, once opened, with the settings it was opened with; shared with the
    /// contexts of the daemon's jobs so they use the process's one session.
    db: std::sync::Arc<std::sync::Mutex<Option<OpenDb>>>,
}

/// The state database opened, and the settings (url, schema, trust, password source) it was
/// opened with.
type OpenDb = (String, std::sync::Arc<Db>);

/// How long a `password_cmd` of the state database may take.
const DB_PASSWORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`Ctx`] remembers about the state key.
#[derive(Default)]
struct KeyCache {
    /// `Some([state])` once a configuration was loaded.
    state: Option<crate::config::State>,
    /// The key read last: from which file, as modified when, and the key.
    loaded: Option<(
        PathBuf,
        Option<std::time::SystemTime>,
        std::sync::Arc<crate::seal::Key>,
    )>,
}

impl Ctx {
    /// Loads and validates the configuration (or returns the preloaded one).
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn config(&self) -> Result<Config> {
        let config = match &self.preloaded {
            Some(config) => config.clone(),
            None => Config::load(&self.env.config_path(self.config_flag.clone())?)?,
        };
        if let Ok(mut cache) = self.key.lock() {
            cache.state = Some(config.state.clone());
        }
        Ok(config)
    }

    /// Where the configuration file is (or would be), without reading it.
    ///
    /// # Errors
    /// See [`Env::config_path`].
    pub fn config_path(&self) -> Result<PathBuf> {
        match &self.preloaded {
            Some(config) => Ok(config.path.clone()),
            None => self.env.config_path(self.config_flag.clone()),
        }
    }

    /// The same context, but commands use `config` instead of reading the file: the daemon's
    /// jobs keep the configuration it last loaded successfully.
    pub fn with_config(&self, config: Config) -> Ctx {
        Ctx {
            env: self.env.clone(),
            config_flag: self.config_flag.clone(),
            preloaded: Some(config),
            out: self.out,
            clock: self.clock.clone(),
            key: std::sync::Mutex::default(),
            db: self.db.clone(),
        }
    }

    /// The account named by `--account`, or the only one configured.
    ///
    /// # Errors
    /// An unknown name, or no name while several accounts are configured.
    pub fn pick_account<'c>(
        &self,
        config: &'c Config,
        name: Option<&str>,
    ) -> Result<&'c crate::config::Account> {
        match name {
            Some(name) => config.account(name),
            None => match config.accounts.values().collect::<Vec<_>>().as_slice() {
                [only] => Ok(only),
                _ => Err(crate::error::UsageError(format!(
                    "choose an account with --account ({})",
                    config
                        .accounts
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into()),
            },
        }
    }

    /// The state directory.
    ///
    /// # Errors
    /// No `$XDG_STATE_HOME` or `$HOME`.
    pub fn state_dir(&self) -> Result<PathBuf> {
        self.env.state_dir()
    }

    /// The token store, sealing tokens with the state key when one is configured.
    ///
    /// # Errors
    /// No `$XDG_STATE_HOME` or `$HOME`; the configured key is missing or unusable
    /// ([`crate::error::KeyError`], exit 77).
    pub fn store(&self) -> Result<Store> {
        self.store_with(self.state_key()?)
    }

    /// The token store without the state key: for work that never opens a grant (deleting one
    /// sealed with a lost key).
    ///
    /// # Errors
    /// No `$XDG_STATE_HOME` or `$HOME`; the database password cannot be read.
    pub fn unsealed_store(&self) -> Result<Store> {
        self.store_with(None)
    }

    fn store_with(&self, key: Option<std::sync::Arc<crate::seal::Key>>) -> Result<Store> {
        Ok(Store::at(&self.state_home()?).with_key(key))
    }

    /// Where the state lives: the state directory or the state database.
    ///
    /// # Errors
    /// No `$XDG_STATE_HOME` or `$HOME`; the database password cannot be read.
    pub fn state_home(&self) -> Result<crate::db::StateHome> {
        Ok(match self.state_settings()?.backend {
            Backend::Files => crate::db::StateHome::Files(self.state_dir()?),
            Backend::Postgres(pg) => crate::db::StateHome::Postgres(self.db(&pg)?),
        })
    }

    /// The outbox of the configured backend.
    ///
    /// # Errors
    /// No `$XDG_STATE_HOME` or `$HOME`; the database password cannot be read.
    pub fn outbox(&self) -> Result<crate::outbox::Outbox> {
        Ok(crate::outbox::Outbox::at(&self.state_home()?))
    }

    /// `[state]` of the configuration last loaded (loading it if none was).
    fn state_settings(&self) -> Result<crate::config::State> {
        let known = self.key.lock().ok().and_then(|c| c.state.clone());
        match known {
            Some(state) => Ok(state),
            None => Ok(self.config()?.state),
        }
    }

    /// The state database of `settings`, opened once per process (again when the settings
    /// change).
    ///
    /// # Errors
    /// The password cannot be read; TLS cannot be set up.
    pub fn db(&self, settings: &crate::config::Postgres) -> Result<std::sync::Arc<Db>> {
        let id = format!(
            "{}|{}|{:?}|{:?}",
            settings.url,
            settings.schema,
            settings.ca_file,
            settings.password.as_ref().map(|p| p.describe())
        );
        if let Ok(cache) = self.db.lock() {
            if let Some((known, db)) = cache.as_ref() {
                if *known == id {
                    return Ok(db.clone());
                }
            }
        }
        let password = settings
            .password
            .as_ref()
            .map(|source| source.resolve("state database password", DB_PASSWORD_TIMEOUT))
            .transpose()?;
        let db = std::sync::Arc::new(Db::new(settings, password)?);
        if let Ok(mut cache) = self.db.lock() {
            *cache = Some((id, db.clone()));
        }
        Ok(db)
    }

    /// The key that seals tokens at rest: `[state] key_file`, else the systemd credential
    /// `mailpilot.key`, else none (plain tokens in 0600 files).
    ///
    /// # Errors
    /// The configuration cannot be read, or the key file is unusable.
    pub fn state_key(&self) -> Result<Option<std::sync::Arc<crate::seal::Key>>> {
        let key_file = self.state_settings()?.key_file;
        let Some(path) = key_file.or_else(|| self.env.credential_key()) else {
            return Ok(None);
        };
        // Read again only when the file changed (a reload may name a new key).
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let Ok(cache) = self.key.lock() {
            if let Some((p, m, key)) = &cache.loaded {
                if *p == path && *m == modified && modified.is_some() {
                    return Ok(Some(key.clone()));
                }
            }
        }
        let key = std::sync::Arc::new(crate::seal::Key::load(&path)?);
        if let Ok(mut cache) = self.key.lock() {
            cache.loaded = Some((path, modified, key.clone()));
        }
        Ok(Some(key))
    }
}

/// The command line of a job (`send …` or `poll …`), parsed like the real one.
///
/// # Errors
/// [`crate::error::UsageError`] naming the job and the option clap refused.
pub fn parse_job(job: &crate::config::Job) -> Result<Command> {
    let argv = ["mailpilot".to_string(), job.kind.to_string()]
        .into_iter()
        .chain(job.args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(cli) => Ok(cli.command),
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            Err(crate::error::UsageError(format!("jobs.{}: {first}", job.name)).into())
        }
    }
}

/// Runs a job's command with this context.
///
/// # Errors
/// As the command.
pub async fn execute_job(ctx: &Ctx, job: &crate::config::Job) -> Result<Exit> {
    match parse_job(job)? {
        Command::Send(args) => args.run(ctx).await,
        Command::Poll(args) => args.run(ctx).await,
        _ => anyhow::bail!("internal: job {} parsed as neither send nor poll", job.name),
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command fails with; `main` turns it into a report and an exit status.
pub async fn run(cli: Cli, env: Env) -> Result<Exit> {
    let ctx = Ctx {
        env,
        config_flag: cli.config,
        out: Output::new(cli.json, cli.quiet),
        preloaded: None,
        clock: std::sync::Arc::new(SystemClock),
        key: std::sync::Mutex::default(),
        db: std::sync::Arc::default(),
    };
    match cli.command {
        Command::Auth(cmd) => cmd.run(&ctx).await,
        Command::Config(cmd) => cmd.run(&ctx).await,
        Command::Send(args) => args.run(&ctx).await,
        Command::Poll(args) => args.run(&ctx).await,
        Command::Watch(args) => args.run(&ctx).await,
        Command::Run(args) => args.run(&ctx).await,
        Command::Daemon(args) => args.run(&ctx).await,
        Command::Jobs(args) => args.run(&ctx).await,
        Command::Status(args) => args.run(&ctx).await,
        Command::Schedule(cmd) => cmd.run(&ctx),
        Command::Sendmail(args) => args.run(&ctx).await,
        Command::Queue(cmd) => cmd.run(&ctx).await,
        Command::Relay(args) => args.run(&ctx).await,
        Command::State(cmd) => cmd.run(&ctx).await,
        Command::Completions(args) => args.run(&ctx),
        Command::Man(args) => args.run(&ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The clap definitions are consistent.
    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }
}

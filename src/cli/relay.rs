//! `mailpilot relay`: the SMTP submission listener of `[relay]` with the outbox's delivery (the
//! daemon without jobs), and `mailpilot relay passwd NAME`, which prints a user's table.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::error::UsageError;
use crate::exit::Exit;
use crate::output::Output;
use crate::relay::{Event, Report};
use crate::secret::Secret;

/// Listen for programs that only know SMTP with a password ([relay] in the configuration) and
/// deliver what they hand over through the account's OAuth2 login. Runs until SIGTERM/SIGINT
/// (SIGHUP reloads users and limits); `mailpilot daemon` runs the same listener when [relay] is
/// configured.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// `passwd NAME`: print a user's table
    #[command(subcommand)]
    command: Option<RelayCommand>,
}

/// `relay` subcommands.
#[derive(Debug, clap::Subcommand)]
enum RelayCommand {
    /// Print a [relay.users.NAME] table with an argon2 hash of a password read from stdin (asked
    /// twice, without echo, on a terminal)
    Passwd(PasswdArgs),
}

#[derive(Debug, clap::Args)]
struct PasswdArgs {
    /// The user name the program logs in with
    name: String,
    /// The account this user's mail goes out through (written into the table)
    #[arg(long)]
    account: Option<String>,
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// No `[relay]` table, a listener that cannot be bound, unusable TLS files; for `passwd`, no
    /// password.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        match self.command {
            Some(RelayCommand::Passwd(args)) => args.run(ctx),
            None => super::daemon::serve(ctx, super::daemon::Mode::RelayOnly).await,
        }
    }
}

impl PasswdArgs {
    fn run(self, ctx: &Ctx) -> Result<Exit> {
        if self.name.is_empty()
            || self.name.len() > 255
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c == ' ' || c == '"' || c == '\\')
        {
            return Err(UsageError(
                "a relay user name is printable, without spaces or quotes".into(),
            )
            .into());
        }
        let password = read_password(ctx)?;
        let hash = crate::relay::auth::hash(&password)?;
        ctx.out.data(&format!("[relay.users.\"{}\"]", self.name))?;
        ctx.out.data(&format!("password_hash = \"{hash}\""))?;
        if let Some(account) = &self.account {
            ctx.out.data(&format!(
                "account = \"{}\"",
                account.replace(['"', '\\'], "")
            ))?;
        }
        Ok(Exit::Success)
    }
}

/// The password: one line of stdin; on a terminal asked twice with echo off (`stty -echo`).
fn read_password(ctx: &Ctx) -> Result<Secret> {
    let mut first = String::new();
    if !std::io::stdin().is_terminal() {
        read_line(&mut first).context("failed to read the password from stdin")?;
        return non_empty(first);
    }
    let _echo = EchoOff::new();
    ctx.out.prompt("password: ");
    read_line(&mut first)?;
    ctx.out.prompt("\nagain: ");
    let mut second = String::new();
    read_line(&mut second)?;
    ctx.out.prompt("\n");
    if first != second {
        bail!("the two passwords differ");
    }
    non_empty(first)
}

fn non_empty(line: String) -> Result<Secret> {
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(UsageError("no password given (one line on stdin)".into()).into());
    }
    Ok(Secret::new(password))
}

/// Reads one line of stdin, at most 4 KiB.
fn read_line(line: &mut String) -> std::io::Result<()> {
    use std::io::Read;
    std::io::stdin()
        .lock()
        .take(4096)
        .read_line(line)
        .map(|_| ())
}

/// Terminal echo off while it lives.
struct EchoOff;

impl EchoOff {
    fn new() -> EchoOff {
        let _ = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        EchoOff
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
}

/// The relay's events, printed on stderr.
pub(crate) struct Printed(pub Output);

impl Report for Printed {
    fn report(&self, event: Event) {
        let out = self.0;
        let who = |user: &Option<String>| match user {
            Some(u) => format!("user \"{u}\""),
            None => "an unauthenticated loopback client".to_string(),
        };
        match event {
            Event::Listening { address, tls } => {
                out.info(&format!("relay: listening on {address} ({tls})"));
            }
            Event::NotListening { error } => out.warn(&format!("relay: a listener failed: {error}")),
            Event::Queued {
                id,
                client,
                user,
                recipients,
                size,
            } => out.info(&format!(
                "relay: queued {id} from {} at {client}: {recipients} recipient(s), {size} bytes",
                who(&user)
            )),
            Event::Refused {
                client,
                user,
                reply,
            } => out.warn(&format!(
                "relay: refused a message from {} at {client}: {reply}",
                who(&user)
            )),
            Event::LoginFailed {
                client,
                user,
                failures,
            } => out.warn(&format!(
                "relay: failed login as \"{user}\" from {} ({failures} of {} before the address is throttled)",
                client.ip(),
                crate::relay::auth::MAX_FAILURES
            )),
            Event::Throttled { client } => out.warn(&format!(
                "relay: login from {} refused unchecked: too many failed logins (throttled for {})",
                client.ip(),
                humantime::format_duration(crate::relay::auth::LOCKOUT)
            )),
            Event::Busy { client } => out.warn(&format!(
                "relay: turned {client} away: max_connections reached"
            )),
            Event::Lost { client, why } => {
                out.warn(&format!("relay: connection from {client} lost: {why}"));
            }
            Event::NotQueued { client, error } => out.warn(&format!(
                "relay: a message from {client} was not queued (the client was told to retry): {error}"
            )),
        }
    }
}

/// Binds the relay of `config` and serves it on a thread of its own (its own runtime), so that
/// the outbox's delivery and the jobs on the caller's thread never hold up a client waiting for
/// its 250; `None` without `[relay]`.
///
/// # Errors
/// A listener cannot be bound, the TLS files are unusable, or the thread cannot start.
pub(crate) fn start(
    ctx: &Ctx,
    config: &crate::config::Config,
) -> Result<Option<crate::relay::Handle>> {
    if config.relay.is_none() {
        return Ok(None);
    }
    let outbox = ctx.outbox()?;
    let relay = crate::relay::Relay::bind(config, outbox, Arc::new(Printed(ctx.out)))?;
    let handle = relay.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the relay's runtime")?;
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || runtime.block_on(relay.serve()))
        .context("failed to start the relay's thread")?;
    Ok(Some(handle))
}

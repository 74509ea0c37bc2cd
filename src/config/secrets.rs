//! Where a client secret comes from (`client_secret`, `_env`, `_file`, `_cmd`), and producing it
//! when a command needs it: bounded in size, and for a command in time (it runs while the
//! account's refresh lock is held, so a hanging command must not hold every other run).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::error::TimedOut;
use crate::secret::Secret;

/// The largest secret read from a file or a command: client secrets are tens of bytes; a
/// command that prints more (`yes`) is stopped.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// How often a running secret command is checked for having ended.
const CMD_POLL: Duration = Duration::from_millis(10);

/// Where a client secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// Written in the config file (which must not be world-readable).
    Inline(Secret),
    /// An environment variable.
    Env(String),
    /// A file; a trailing newline is dropped.
    File(PathBuf),
    /// A shell command whose stdout is the secret.
    Cmd(String),
}

impl SecretSource {
    /// Says where the secret comes from, without showing it.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Inline(_) => "inline in the config file [redacted]".into(),
            SecretSource::Env(var) => {
                let state = if std::env::var_os(var).is_some() {
                    "set"
                } else {
                    "NOT SET"
                };
                format!("environment variable {var} ({state})")
            }
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Cmd(cmd) => format!("command `{cmd}`"),
        }
    }

    /// Produces the secret. `what` names it in errors (`client secret of account "work"`); a
    /// command gets `timeout` to answer.
    ///
    /// # Errors
    /// The variable is unset, the file unreadable or too large, the command fails, prints too
    /// much or takes too long ([`TimedOut`] in the chain), or the result is empty.
    pub fn resolve(&self, what: &str, timeout: Duration) -> Result<Secret> {
        let value = match self {
            SecretSource::Inline(secret) => secret.expose().to_string(),
            SecretSource::Env(var) => std::env::var(var).with_context(|| {
                format!("failed to read the {what} from environment variable {var}")
            })?,
            SecretSource::File(path) => crate::fsutil::read_limited(path, MAX_SECRET_BYTES)
                .and_then(|bytes| String::from_utf8(bytes).context("it is not UTF-8"))
                .with_context(|| format!("failed to read the {what} from {}", path.display()))?,
            SecretSource::Cmd(cmd) => run_secret_cmd(cmd, timeout)
                .with_context(|| format!("failed to get the {what} from command `{cmd}`"))?,
        };
        let value = value.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            bail!("the {what} is empty ({})", self.describe());
        }
        Ok(Secret::new(value))
    }
}

/// Runs `cmd` with `sh -c` in its own process group, reading at most [`MAX_SECRET_BYTES`] of its
/// output; past `timeout` (or that much output) the whole group is killed.
fn run_secret_cmd(cmd: &str, timeout: Duration) -> Result<String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .context("failed to start sh")?;
    let stdout = child.stdout.take().context("internal: no stdout pipe")?;
    let overflow = Arc::new(AtomicBool::new(false));
    let reader = {
        let overflow = overflow.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = stdout.take(MAX_SECRET_BYTES + 1).read_to_end(&mut out);
            overflow.store(out.len() as u64 > MAX_SECRET_BYTES, Ordering::SeqCst);
            read.map(|_| out)
        })
    };
    let deadline = Instant::now() + timeout;
    let too_slow = |what: &str| {
        TimedOut(format!(
            "the command {what} within {} (token_timeout)",
            humantime::format_duration(timeout)
        ))
    };
    let status = loop {
        if overflow.load(Ordering::SeqCst) {
            kill_group(&mut child);
            bail!(
                "the command printed more than {} KiB",
                MAX_SECRET_BYTES / 1024
            );
        }
        if let Some(status) = child.try_wait().context("failed to wait for the command")? {
            break status;
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(too_slow("did not finish").into());
        }
        std::thread::sleep(CMD_POLL);
    };
    // A command that left something running with our pipe open must not keep us waiting.
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(too_slow("kept its output open").into());
        }
        std::thread::sleep(CMD_POLL);
    }
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("internal: the output reader panicked"))?
        .context("failed to read the command's output")?;
    if out.len() as u64 > MAX_SECRET_BYTES {
        bail!(
            "the command printed more than {} KiB",
            MAX_SECRET_BYTES / 1024
        );
    }
    if !status.success() {
        bail!("the command exited with {status}");
    }
    String::from_utf8(out).context("the command's output is not UTF-8")
}

/// Kills the command and everything it started (its process group), then reaps it.
fn kill_group(child: &mut std::process::Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

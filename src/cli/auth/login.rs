//! `mailpilot auth login ACCOUNT`: the first authorization, in a browser or with a device code.

use std::io::{BufRead, IsTerminal};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::Ctx;
use crate::clock::span;
use crate::exit::Exit;
use crate::oauth::login::{self, Flow, Prompt};
use crate::oauth::scope;
use crate::oauth::TokenSource;
use crate::output::Output;

/// Signs in to the provider and stores the grant. By default opens the provider's page in a
/// browser and receives the answer on a loopback port (127.0.0.1); `--paste` for hosts without a
/// browser (open the URL anywhere, paste the final address back); `--device` for the device code
/// flow (Microsoft; Google does not allow it for Gmail).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Account name from the configuration
    account: String,
    /// Headless: print the URL, then read the address the browser ended at (or the code) from stdin
    #[arg(long, conflicts_with = "device")]
    paste: bool,
    /// Device code flow: enter a short code on any device
    #[arg(long)]
    device: bool,
    /// Fixed loopback port (e.g. for `ssh -L PORT:127.0.0.1:PORT` from your workstation) [default: redirect_uri's port, else any free one; 8765 with --paste]
    #[arg(long, conflicts_with = "device")]
    port: Option<u16>,
    /// Do not try to open a browser; just print the URL
    #[arg(long)]
    no_browser: bool,
    /// How long to wait for the sign-in
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The sign-in dialogue on the terminal; every line goes through the output module.
struct Terminal {
    out: Output,
    open_browser: bool,
}

impl Prompt for Terminal {
    fn open_url(&mut self, url: &str, tunnel_port: Option<u16>) {
        self.out.prompt(&format!(
            "Open this address in a browser and sign in:\n\n  {url}\n"
        ));
        if let Some(port) = tunnel_port {
            self.out.prompt(&format!("If that browser runs on another machine, tunnel the answer back first:\n\n  ssh -L {port}:127.0.0.1:{port} USER@THIS-HOST\n"));
        }
        if self.open_browser {
            let _ = Command::new("xdg-open")
                .arg(url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
    }

    fn device_code(&mut self, verification_uri: &str, user_code: &str, complete_uri: Option<&str>) {
        self.out.prompt(&format!(
            "On any device, open {verification_uri} and enter the code:\n\n  {user_code}\n"
        ));
        if let Some(uri) = complete_uri {
            self.out.prompt(&format!("(or open {uri})\n"));
        }
        self.out.prompt("Waiting for you to approve...");
    }

    fn read_pasted(&mut self) -> Result<String> {
        if std::io::stdin().is_terminal() {
            self.out.prompt("After signing in, the browser ends at an address starting with http://127.0.0.1 (the page may not load).\nPaste that whole address (or just the code) here and press Enter:");
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("failed to read the pasted address")?;
        Ok(line)
    }
}

impl Args {
    /// Runs the command.
    ///
    /// # Errors
    /// Refused or failed authorization (77), state mismatch or timeout (1), network (75).
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let config = ctx.config()?;
        let account = config.account(&self.account)?;
        super::require_person(account, "login")?;
        let store = ctx.store()?;
        let tokens = TokenSource::new(account, &store, ctx.clock.as_ref());
        let secret = tokens.client_secret()?;
        let flow = match (self.device, self.paste) {
            (true, _) => Flow::Device {
                timeout: self.timeout,
            },
            (false, true) => Flow::Paste { port: self.port },
            (false, false) => Flow::Loopback {
                port: self.port,
                timeout: self.timeout,
            },
        };
        let desktop =
            std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
        let mut prompt = Terminal {
            out: ctx.out,
            open_browser: desktop && !self.no_browser && !self.paste,
        };
        let server = tokens.server().await?;
        let granted = login::login(account, &server, secret.as_ref(), &flow, &mut prompt).await?;
        let missing = scope::missing(account, granted.scope.as_deref());
        let token = tokens.adopt_login(granted).await?;
        if !missing.is_empty() {
            let (s, it) = if missing.len() == 1 {
                ("", "it")
            } else {
                ("s", "them")
            };
            ctx.out.warn(&format!(
                "the server did not grant scope{s} {}: mail that needs {it} will be refused, and refreshes will not ask for {it}; to get {it}, allow every requested permission and run `mailpilot auth login {}` again",
                missing.join(", "),
                account.name
            ));
        }
        ctx.out.info(&format!(
            "signed in: stored the grant of account \"{}\" ({}) in {} (access token valid for {})",
            account.name,
            account.email,
            store.place(&account.name),
            span(u64::try_from(token.remaining(ctx.clock.now())).unwrap_or(0)),
        ));
        Ok(Exit::Success)
    }
}

//! `mailpilot completions SHELL` and `mailpilot man [--dir DIR]`: shell completions and man pages
//! generated from the clap definitions, so they always list exactly the commands and options of
//! this build (the Debian package ships them; `scripts/package.sh` makes them).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::{Cli, Ctx};
use crate::exit::Exit;

/// Prints the completion script for SHELL
///
/// bash: `mailpilot completions bash > ~/.local/share/bash-completion/completions/mailpilot`;
/// zsh: into a directory on `$fpath` as `_mailpilot`; fish: `~/.config/fish/completions/mailpilot.fish`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell
    shell: clap_complete::Shell,
}

impl CompletionsArgs {
    /// Runs the command.
    ///
    /// # Errors
    /// stdout is closed.
    pub fn run(self, ctx: &Ctx) -> Result<Exit> {
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "mailpilot", &mut script);
        ctx.out.document(&script)?;
        Ok(Exit::Success)
    }
}

/// Prints the man page (roff; `mailpilot man | man -l -`), or writes every page into a directory
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write mailpilot.1 and one page per subcommand (mailpilot-send.1, mailpilot-auth-login.1, …)
    /// into DIR instead
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl ManArgs {
    /// Runs the command.
    ///
    /// # Errors
    /// stdout is closed, or a page cannot be written into `--dir`.
    pub fn run(self, ctx: &Ctx) -> Result<Exit> {
        let page = main_page().context("failed to render the man page")?;
        match self.dir {
            None => ctx.out.document(&page)?,
            Some(dir) => {
                let failed = || format!("failed to write the man pages into {}", dir.display());
                std::fs::create_dir_all(&dir).with_context(failed)?;
                clap_mangen::generate_to(Cli::command(), &dir).with_context(failed)?;
                std::fs::write(dir.join("mailpilot.1"), &page).with_context(failed)?;
                ctx.out
                    .info(&format!("wrote the man pages into {}", dir.display()));
            }
        }
        Ok(Exit::Success)
    }
}

/// `mailpilot(1)`: clap's name, synopsis, options and subcommands, then exit status, files,
/// environment and the other pages as proper roff lists (clap would print them as one
/// reflowed paragraph).
fn main_page() -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let list = |title: &str, items: &[(&str, &str)]| {
        let mut text = format!(".SH \"{title}\"\n");
        for (term, body) in items {
            text.push_str(&format!(".TP\n{}\n{}\n", roff(term), roff(body)));
        }
        text
    };
    page.extend_from_slice(
        list(
            "EXIT STATUS",
            &[
                ("0", "Success."),
                ("1", "Failed; the message says what to look at."),
                ("2", "Bad command line or configuration."),
                ("75", "Temporary failure (network, server, busy lock): retry later; nothing was lost."),
                ("77", "The account needs authorization: run the mailpilot auth command the hint names."),
            ],
        )
        .as_bytes(),
    );
    page.extend_from_slice(
        list(
            "FILES",
            &[
                ("$XDG_CONFIG_HOME/mailpilot/config.toml", "The configuration (~/.config/mailpilot/config.toml), unless --config or $MAILPILOT_CONFIG names another; /etc/mailpilot/config.toml when neither exists. Check it with mailpilot config check."),
                ("$XDG_STATE_HOME/mailpilot/", "State (~/.local/state/mailpilot/): tokens/ (grants, mode 0700; discovery/ caches issuer metadata), the outbox, poll checkpoints and job records."),
            ],
        )
        .as_bytes(),
    );
    page.extend_from_slice(
        list(
            "ENVIRONMENT",
            &[
                ("MAILPILOT_CONFIG", "The configuration file, when --config is not given."),
                ("HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY", "The proxy of the OAuth endpoints for accounts without a proxy setting."),
                ("SSL_CERT_FILE, SSL_CERT_DIR", "Where the system trust store is read from (trusted besides the built-in roots)."),
                ("RUST_LOG", "Log filter, replacing -v and -q."),
            ],
        )
        .as_bytes(),
    );
    let see_also: Vec<String> = Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| format!("\\fBmailpilot-{}\\fR(1)", c.get_name()))
        .collect();
    page.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", see_also.join(", ")).as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// `text` safe as a roff text line: backslashes and hyphens escaped, no leading control dot.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

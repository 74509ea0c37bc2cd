//! `mailpilot state rotate-key`: re-seal every stored grant under another key (or none).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Ctx;
use crate::exit::Exit;
use crate::oauth::{FileStore, TokenStore};

/// The `state` subcommands.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Re-seal every stored grant with the key in NEW_KEY_FILE (or store them in plain with
    /// --plain); then point [state] key_file at it. Stop the daemon and timers first.
    RotateKey {
        /// The new key: 32 bytes or their base64 (`head -c 32 /dev/urandom > FILE; chmod 600 FILE`)
        #[arg(required_unless_present = "plain", value_name = "NEW_KEY_FILE")]
        new_key_file: Option<PathBuf>,
        /// Store the grants unsealed (0600 files) instead
        #[arg(long, conflicts_with = "new_key_file")]
        plain: bool,
    },
}

impl StateCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// The current or the new key is unusable (77; nothing rewritten), a grant cannot be
    /// opened, or a file cannot be written.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        let StateCommand::RotateKey { new_key_file, .. } = self;
        let config = ctx.config()?;
        let current = ctx.store()?;
        let new_key = new_key_file
            .as_deref()
            .map(crate::seal::Key::load)
            .transpose()?
            .map(std::sync::Arc::new);
        let new_id = new_key.as_ref().map(|k| k.id().to_string());
        let target = FileStore::new(current.dir()).with_key(new_key);
        // Every grant is opened with the current key before any is rewritten.
        let mut grants = Vec::new();
        for name in config.accounts.keys() {
            let lock = crate::oauth::source::wait_for_lock(
                &current,
                name,
                std::time::Duration::from_secs(30),
            )
            .await?;
            if let Some(token) = current.load(name)? {
                grants.push((lock, token));
            }
        }
        for (_lock, token) in &grants {
            target.save(token).with_context(|| {
                format!(
                    "failed to re-seal the grant of account \"{}\"",
                    token.account
                )
            })?;
        }
        let what = match (&new_id, &new_key_file) {
            (Some(id), Some(file)) => format!(
                "sealed {} grant(s) with key {id}; now set [state] key_file = \"{}\" in {}",
                grants.len(),
                file.display(),
                config.path.display()
            ),
            _ => format!(
                "stored {} grant(s) unsealed; now remove [state] key_file from {}",
                grants.len(),
                config.path.display()
            ),
        };
        ctx.out.info(&what);
        Ok(Exit::Success)
    }
}

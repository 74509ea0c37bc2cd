//! `mailpilot state`: create or upgrade the state database (`init`), check that the configured
//! state is usable (`check`), copy grants between the files and the database (`migrate`), and
//! re-seal every grant under another key (`rotate-key`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use super::Ctx;
use crate::config::Backend;
use crate::db::StateHome;
use crate::exit::Exit;
use crate::oauth::TokenStore;

/// The `state` subcommands.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Create mailpilot's tables in the [state] database, or upgrade them (safe to run again, and
    /// from several hosts at once)
    Init,
    /// Check that the configured state is usable: the database answers with the right schema, and
    /// every stored grant opens with the configured key
    Check,
    /// Move the whole state from one backend to the other: grants (sealed ones stay sealed), poll
    /// checkpoints, job outcomes, send journals, the outbox. Running it again changes nothing;
    /// newer state in the target is kept. Stop the daemon and timers first
    Migrate {
        /// Where the grants are now
        #[arg(long, value_enum)]
        from: Place,
        /// Where they go
        #[arg(long, value_enum)]
        to: Place,
    },
    /// Re-seal every stored grant with the key in NEW_KEY_FILE (or store them in plain with
    /// --plain); then point [state] key_file at it. Stop the daemon and timers first.
    RotateKey {
        /// The new key: 32 bytes or their base64 (`head -c 32 /dev/urandom > FILE; chmod 600 FILE`)
        #[arg(required_unless_present = "plain", value_name = "NEW_KEY_FILE")]
        new_key_file: Option<PathBuf>,
        /// Store the grants unsealed instead
        #[arg(long, conflicts_with = "new_key_file")]
        plain: bool,
    },
}

/// A state backend named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Place {
    /// The token files of this host ($XDG_STATE_HOME/mailpilot/tokens)
    Files,
    /// The database of [state] url
    Postgres,
}

impl StateCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// The database is unavailable (75) or refuses the login (77); a key is unusable (77; nothing
    /// rewritten); a grant cannot be opened or a file written.
    pub async fn run(self, ctx: &Ctx) -> Result<Exit> {
        match self {
            StateCommand::Init => init(ctx).await,
            StateCommand::Check => check(ctx).await,
            StateCommand::Migrate { from, to } => migrate(ctx, from, to).await,
            StateCommand::RotateKey { new_key_file, .. } => rotate_key(ctx, new_key_file).await,
        }
    }
}

/// The configured database, or a usage error naming the setting.
fn database(ctx: &Ctx) -> Result<std::sync::Arc<crate::db::Db>> {
    match ctx.config()?.state.backend {
        Backend::Postgres(pg) => ctx.db(&pg),
        Backend::Files => Err(crate::error::UsageError(
            "[state] backend is \"files\": set backend = \"postgres\" and url in [state] first"
                .into(),
        )
        .into()),
    }
}

async fn init(ctx: &Ctx) -> Result<Exit> {
    let db = database(ctx)?;
    let applied = crate::db::schema::init(&db).await?;
    for step in &applied.steps {
        ctx.out.info(&format!("created: {step}"));
    }
    let line = if applied.from == applied.to {
        format!(
            "state database {} schema {}: already at version {}",
            db.target(),
            db.schema(),
            applied.to
        )
    } else {
        format!(
            "state database {} schema {}: version {} -> {}",
            db.target(),
            db.schema(),
            applied.from,
            applied.to
        )
    };
    ctx.out.data(&line)?;
    Ok(Exit::Success)
}

async fn check(ctx: &Ctx) -> Result<Exit> {
    let config = ctx.config()?;
    let store = ctx.store()?;
    let sealing = match ctx.state_key()? {
        Some(key) => format!("sealed with key {}", key.id()),
        None => "no state key: grants stored in plain".into(),
    };
    ctx.out
        .data(&format!("state: {} ({sealing})", store.describe()))?;
    let mut worst = Exit::Success;
    for account in config.accounts.keys() {
        let line = match store.load(account).await {
            Ok(Some(_)) => match store.is_sealed(account).await? {
                Some(true) => "grant opens (sealed)".to_string(),
                _ => "grant opens (plain)".to_string(),
            },
            Ok(None) => "no grant stored".to_string(),
            Err(e) => {
                let exit = crate::exit::classify(&e);
                if exit == Exit::Transient {
                    return Err(e);
                }
                worst = worst.worst(exit);
                format!("{:#}", e)
            }
        };
        ctx.out.data(&format!("  {account}: {line}"))?;
    }
    Ok(worst)
}

async fn migrate(ctx: &Ctx, from: Place, to: Place) -> Result<Exit> {
    if from == to {
        return Err(crate::error::UsageError("--from and --to name the same place".into()).into());
    }
    let files = StateHome::Files(ctx.state_dir()?);
    let pg = StateHome::Postgres(database(ctx)?);
    let (source, target) = match from {
        Place::Files => (&files, &pg),
        Place::Postgres => (&pg, &files),
    };
    let done = crate::migrate::run(source, target).await?;
    let grants = &done.grants;
    for (list, what) in [
        (&grants.copied, "copied"),
        (&grants.same, "already there"),
        (&grants.kept, "kept (the target's grant is as new or newer)"),
    ] {
        for account in list {
            ctx.out.info(&format!("grant of {account}: {what}"));
        }
    }
    ctx.out.data(&format!(
        "grants: {} copied, {} already there, {} kept newer; {} poll checkpoints, {} job outcomes, {} journal entries copied; {} messages moved; from {} to {}",
        grants.copied.len(),
        grants.same.len(),
        grants.kept.len(),
        done.checkpoints,
        done.jobs,
        done.journal_entries,
        done.messages,
        describe(source),
        describe(target)
    ))?;
    Ok(Exit::Success)
}

/// `files in DIR` or `the state database HOST:PORT/DB (schema S)`.
fn describe(home: &StateHome) -> String {
    match home {
        StateHome::Files(dir) => format!("files in {}", dir.display()),
        StateHome::Postgres(db) => {
            format!(
                "the state database {} (schema {})",
                db.target(),
                db.schema()
            )
        }
    }
}

async fn rotate_key(ctx: &Ctx, new_key_file: Option<PathBuf>) -> Result<Exit> {
    let config = ctx.config()?;
    let current = ctx.store()?;
    let new_key = new_key_file
        .as_deref()
        .map(crate::seal::Key::load)
        .transpose()?
        .map(std::sync::Arc::new);
    let new_id = new_key.as_ref().map(|k| k.id().to_string());
    let target = current.clone().with_key(new_key);
    // Every grant is opened with the current key before any is rewritten.
    let mut grants = Vec::new();
    for name in config.accounts.keys() {
        let lock =
            crate::oauth::source::wait_for_lock(&current, name, std::time::Duration::from_secs(30))
                .await?;
        if let Some(token) = current.load(name).await? {
            grants.push((lock, token));
        }
    }
    for (_lock, token) in &grants {
        target.save(token).await.with_context(|| {
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
